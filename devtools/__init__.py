"""Developer tools outside the core: the `twinserve` client (`cli`) and the local launcher
`make run` starts (`stack`).

May import: `serving.errors`, `serving.types`, `serving.protocol`, `serving.rpc`,
`serving.pb`. Tools talk to servers over gRPC or start them as processes, never in-process.
"""
