"""Call a running server as boto3 calls a real endpoint, streamed and not.

Runs in the SDK's environment (``.venv-sdk``), as a user's client would. Usage:

    python boto3_stream_client.py URL CONTENT_TYPE BODY [TARGET_MODEL]

With TARGET_MODEL (a multi-model endpoint's model), only invoke_endpoint is called:
SageMaker's invoke_endpoint_with_response_stream takes no TargetModel.

Prints one JSON object: the ``PayloadPart`` chunks of
``invoke_endpoint_with_response_stream`` as they came (text), when the first and the
last came (seconds after the call), the response's ContentType, the error the event
stream raised if any, and (when none) the body ``invoke_endpoint`` returns for the same
request.
"""

from __future__ import annotations

import json
import sys
import time

import boto3
from botocore.exceptions import EventStreamError


def main() -> None:
    url, content_type, body = sys.argv[1:4]
    target = {"TargetModel": sys.argv[4]} if len(sys.argv) > 4 else {}
    runtime = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test",
                            region_name="us-east-1").client("sagemaker-runtime",
                                                            endpoint_url=url)
    parts, times, error, response = [], [], None, {}
    # SageMaker's response streams take no TargetModel (multi-model endpoints do not stream).
    if not target:
        started = time.monotonic()
        response = runtime.invoke_endpoint_with_response_stream(
            EndpointName="local-endpoint", Body=body.encode(), ContentType=content_type)
        try:
            for event in response["Body"]:
                if "PayloadPart" in event:
                    parts.append(event["PayloadPart"]["Bytes"].decode("utf-8"))
                    times.append(time.monotonic() - started)
        except EventStreamError as exc:
            error = {"code": exc.response["Error"]["Code"],
                     "message": exc.response["Error"]["Message"]}
    result = {"parts": parts, "first_at": times[0] if times else None,
              "last_at": times[-1] if times else None,
              "content_type": response.get("ContentType"), "error": error}
    if error is None:  # the same request, answered whole
        plain = runtime.invoke_endpoint(EndpointName="local-endpoint", Body=body.encode(),
                                        ContentType=content_type, **target)
        result["plain"] = plain["Body"].read().decode("utf-8")
        result["plain_content_type"] = plain["ContentType"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
