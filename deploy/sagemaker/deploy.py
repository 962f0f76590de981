"""A SageMaker real-time endpoint serving a model with serving-toolkit's image: the model,
an endpoint configuration with two instances, the endpoint, and autoscaling on invocations
per instance.

    python deploy/sagemaker/deploy.py --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/serving-toolkit:pytorch \\
        --model-data s3://my-bucket/models/model.tar.gz \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerExecution --dry-run

``--dry-run`` prints each call it would make (service, operation, parameters) as JSON, after
checking the parameters against the AWS API's own definitions (botocore's models, on this
machine): nothing is sent. Without it, the calls are made with boto3's default credentials.
``--engine ray`` runs the same image with Ray Serve inside each instance
(``SERVING_ENGINE=ray``). Needs boto3.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing as t

#: The metric SageMaker autoscaling follows: invocations per instance per minute.
METRIC = "SageMakerVariantInvocationsPerInstance"
VARIANT = "AllTraffic"


def plan(args: argparse.Namespace) -> list[tuple[str, str, dict[str, t.Any]]]:
    """The calls that create the endpoint: ``(service, operation, parameters)``."""
    name = args.name
    environment = {
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers),
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(args.timeout),
        "SERVING_LOG_FORMAT": "json",
        "SERVING_ENGINE": args.engine,
    }
    if args.engine == "ray":
        environment["SERVING_RAY_REPLICAS"] = str(args.workers)
    resource = f"endpoint/{name}/variant/{VARIANT}"
    return [
        ("sagemaker", "create_model", {
            "ModelName": name,
            "ExecutionRoleArn": args.role_arn,
            "PrimaryContainer": {
                "Image": args.image_uri,
                "ModelDataUrl": args.model_data,
                "Environment": environment,
            },
        }),
        ("sagemaker", "create_endpoint_config", {
            "EndpointConfigName": name,
            "ProductionVariants": [{
                "VariantName": VARIANT,
                "ModelName": name,
                "InstanceType": args.instance_type,
                "InitialInstanceCount": args.instance_count,
                # The container's /ping must answer within this after it starts.
                "ContainerStartupHealthCheckTimeoutInSeconds": 600,
            }],
        }),
        ("sagemaker", "create_endpoint", {
            "EndpointName": name,
            "EndpointConfigName": name,
        }),
        ("application-autoscaling", "register_scalable_target", {
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": args.instance_count,
            "MaxCapacity": args.max_instances,
        }),
        ("application-autoscaling", "put_scaling_policy", {
            "PolicyName": f"{name}-invocations-per-instance",
            "ServiceNamespace": "sagemaker",
            "ResourceId": resource,
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(args.invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                "ScaleInCooldown": 300,
                "ScaleOutCooldown": 60,
            },
        }),
    ]


def check(service: str, operation: str, params: dict[str, t.Any]) -> None:
    """Check ``params`` against the operation's input shape in botocore's model of the
    service (raises ``botocore.exceptions.ParamValidationError``); no credentials, no
    network."""
    import botocore.session
    from botocore.validate import validate_parameters

    model = botocore.session.get_session().get_service_model(service)
    operation_name = "".join(part.capitalize() for part in operation.split("_"))
    validate_parameters(params, model.operation_model(operation_name).input_shape)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-uri", required=True, help="The image, in ECR.")
    parser.add_argument("--model-data", required=True, help="s3://…/model.tar.gz")
    parser.add_argument("--role-arn", required=True, help="SageMaker's execution role.")
    parser.add_argument("--name", default="serving-toolkit",
                        help="Name of the model, endpoint configuration and endpoint.")
    parser.add_argument("--instance-type", default="ml.c5.xlarge")
    parser.add_argument("--instance-count", type=int, default=2,
                        help="Instances to start with, and the fewest autoscaling keeps.")
    parser.add_argument("--max-instances", type=int, default=6)
    parser.add_argument("--invocations-per-instance", type=int, default=300,
                        help="Autoscaling's target: invocations per instance per minute.")
    parser.add_argument("--workers", type=int, default=4,
                        help="Workers (or Ray replicas) per instance: its vCPUs.")
    parser.add_argument("--timeout", type=int, default=60,
                        help="The request deadline in seconds (SageMaker's own is 60).")
    parser.add_argument("--engine", choices=("gunicorn", "ray"), default="gunicorn")
    parser.add_argument("--region", default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="Print the calls as JSON, checked against the API; send nothing.")
    args = parser.parse_args(argv)
    if not 1 <= args.instance_count <= args.max_instances:
        parser.error("--instance-count must be 1 to --max-instances")
    calls = plan(args)
    for service, operation, params in calls:
        check(service, operation, params)
    if args.dry_run:
        print(json.dumps([{"service": s, "operation": o, "parameters": p}
                          for s, o, p in calls], indent=2))
        return 0
    import boto3

    for service, operation, params in calls:
        client = boto3.client(service, region_name=args.region)
        if operation == "register_scalable_target":  # autoscaling needs the endpoint up
            print(f"waiting for endpoint {args.name} to be InService…", file=sys.stderr)
            boto3.client("sagemaker", region_name=args.region).get_waiter(
                "endpoint_in_service").wait(EndpointName=args.name)
        print(f"{service}.{operation}", file=sys.stderr)
        getattr(client, operation)(**params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
