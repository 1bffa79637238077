"""The cluster topology's names, ports and addresses: one table that the code, the
`launch/local_cluster.sh` script and `docker/docker-compose.yml` agree on (a test checks).

Compose runs MinIO + a Ray head + Ray workers + a submit service; with no Docker engine the
same topology runs as plain processes on this machine (`launch/local_cluster.sh`): an S3
server, a Ray head and a second Ray node, each on its own loopback address (Ray resolves
127.0.0.1 to the machine's routable address, but keeps other 127.x addresses).
"""

BUCKET = "vlpdist"  # the study bucket MinIO's init container / the local S3 server creates
S3_PORT = 9000  # MinIO's API port; the local S3 server listens on 127.0.0.1:S3_PORT
RAY_PORT = 6379  # the Ray head's GCS port
DASHBOARD_PORT = 8265  # Ray dashboard and job-submission API (`ray job submit --address`)
HEAD_IP = "127.0.0.2"  # local cluster: the Ray head's node address
WORKER_IP = "127.0.0.3"  # local cluster: the second Ray node's address
S3_ACCESS_KEY = "vlpdist-local"  # credentials of the local S3 server / MinIO (test only)
S3_SECRET_KEY = "vlpdist-local-secret"
STUDY_CONFIG = "configs/study/demo.yaml"  # what the compose submit service runs
# environment variables the submit path carries to the study driver (values never printed)
S3_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
