"""`edgecls serve`: the device as a service, on the light runtime (no TensorFlow, no Keras).

Modules by job: `config` (options and limits), `images` (uploads checked and decoded), `engine`
(the one thread that runs models, with a bounded queue), `models` (updates, checks, swap and
rollback), `live` (the camera stream, its viewers and frames to learn from), `learn` (the
uncertain-frame collector), `metrics` (Prometheus), `api`/`view`/`admin` (HTTP routes), `app`
(assembly, authentication), `server` (process life: start, SIGTERM, shutdown), `command` (CLI)
and `unit` (systemd).
"""
