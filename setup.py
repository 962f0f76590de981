from setuptools import find_packages, setup

setup(
    name="serving-toolkit",
    version="0.1.0",
    description="A gunicorn + Flask model server with the SageMaker hosting contract",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["serving", "serving.*", "handlers", "handlers.*"]),
    # py.typed: the annotations are part of the API (PEP 561), for user code and plugins.
    package_data={"handlers": ["py.typed"], "handlers.content": ["README.md"],
                  "serving": ["py.typed"], "serving.http": ["openapi.json"]},
    install_requires=[
        "flask>=3.0,<4",
        "gunicorn>=23.0",
        # llhttp, the HTTP/1.1 parser of the gunicorn worker (serving.hosts.gunicorn.http1); 0.7 and newer
        # bundle llhttp 9.3, which refuses the chunk-extension desyncs of 2025.
        "httptools>=0.7,<1",
        # WebSocket frames and handshake for bidirectional streams
        # (serving.hosts.gunicorn.websocket), sans-IO like llhttp.
        "wsproto>=1.2,<2",
        "numpy>=1.23",
        "orjson>=3.9",
        "pillow>=10",
        "prometheus-client>=0.20",
        "protobuf>=4.21",
    ],
    extras_require={
        "pytorch": ["torch>=2.1"],
        # Chainer 7.8.1 is an sdist: build it with --no-build-isolation and setuptools < 81
        # (see the Makefile); it imports with SETUPTOOLS_USE_DISTUTILS=stdlib, which serve sets.
        "chainer": ["chainer>=7.8", "numpy<2"],  # np.sctypes, gone in NumPy 2
        # MXNet 1.9 still uses np.bool, gone in NumPy 1.24.
        "mxnet": ["mxnet>=1.9,<2", "numpy<1.24"],
        # The Ray engine (serve --engine ray) and batch transform on Ray Data.
        "ray": ["ray[serve,data]>=2.40,<3"],
        # TorchServe model archives and handlers (serve --model-store, a .mar): the handler
        # base classes, loader and context are TorchServe's own; 0.12 is its last release.
        "torchserve": ["torchserve==0.12.0", "pyyaml>=6"],
        # The Open Inference Protocol over gRPC (serve --grpc-port): grpcio, and the
        # service's stubs as NVIDIA generates them from the protocol's .proto.
        "grpc": ["grpcio>=1.62", "tritonclient[grpc]>=2.50,<3"],
        # The load test users run against their container (tests/load/locustfile.py).
        "load": ["locust>=2.47,<3"],
        "test": ["pytest>=8", "requests>=2.31", "h11>=0.16", "websocket-client>=1.8",
                 "boto3>=1.34", "hypothesis>=6.100",
                 "locust>=2.47,<3", "schemathesis>=4,<5",
                 # The Open Inference Protocol's clients (KServe v2 REST, binary tensors;
                 # gRPC).
                 "tritonclient[http,grpc]>=2.50,<3",
                 # The layers and import circles test (.importlinter).
                 "import-linter>=2.1,<3"],
    },
    entry_points={"console_scripts": ["serve=serving.cli:main"]},
)
