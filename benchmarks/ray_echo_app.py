"""A bare Ray Serve deployment that sends the body back: Ray's own cost per request, with
the replicas, CPUs and concurrency of benchmarks/ray_serve.py's Ray engine.

    python benchmarks/ray_echo_app.py PORT
"""
import signal, sys, threading
import ray
from ray import serve
from starlette.responses import Response

@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4)
class Echo:
    async def __call__(self, request):
        return Response(await request.body(), media_type="application/json")

ray.init(address="local", include_dashboard=False, object_store_memory=256 * 2**20)
stop = threading.Event()
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda *_: stop.set())
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(Echo.bind(), name="echo", route_prefix="/")
print("ready", flush=True)
while not stop.wait(1):
    pass
serve.shutdown()
ray.shutdown()
