"""`edgecls serve`: the device as a service, on the light runtime (no TensorFlow, no Keras).

Modules by job: `config` (options and limits), `images` and `bodies` (request bodies read with
limits, pictures checked and decoded), `schema` (the KServe v2 inference body, validated strictly),
`engine` (the one thread that runs models, with bounded admission), `models`, `history`,
`update_check`, `references` and `watch` (updates: stage, check against kept reference pictures,
swap or refuse, the history of models served by content, rollback),
`live` (the stream inside the server and what viewers get), `learn` (uncertain frames kept for
training), `metrics` (Prometheus), `api`, `admin` and `view` (HTTP routes), `app` (assembly,
errors, authentication), `connections` (accepting: caps, header deadline, idle eviction), `server`
(process life: start, SIGTERM, drain) and `unit` (systemd). The commands are in
`edgecls/cli/serve.py`.
"""
