"""The gRPC kit every twinserve server is built from, service or gateway: the server factory
(`server`), interceptors that each do one job (`interceptor`, `drain`, `auth`), TLS and tokens
(`security`), call bookkeeping and logs (`calls`, `logs`), traces (`tracing`) and the
metrics every server has (`metrics`).

May import: `serving.errors`, `serving.types`, `serving.protocol`, `serving.pb`, grpcio,
prometheus-client, OpenTelemetry. Never a model, a framework or the engine.
"""
