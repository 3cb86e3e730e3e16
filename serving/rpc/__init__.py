"""The gRPC kit every twinserve server is built from, service or gateway: the server factory
(`server`); interceptors that each do one job: the drain (`drain`), tokens (`auth`), and the
call interceptor (`interceptor`), the one place where exceptions become statuses, which runs
the concerns of every call (`calls` draws the contract), each in a module of its own: the
gRPC metrics (`metrics`), the call log (`call_log`), the trace span (`tracing`) and the bound
on calls at once (`admission`); undecodable requests (`decoding`); TLS (`security`) and
logging setup (`logs`).

May import: `serving.errors`, `serving.types`, `serving.protocol`, `serving.pb`, grpcio,
prometheus-client, OpenTelemetry. Never a model, a framework or the engine.
"""
