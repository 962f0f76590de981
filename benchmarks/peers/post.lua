-- wrk: POST the payload file named by WRK_PAYLOAD (JSON), count non-200 answers.
local f = assert(io.open(os.getenv("WRK_PAYLOAD"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
wrk.headers["Accept"] = os.getenv("WRK_ACCEPT") or "application/json"
