#!/usr/bin/env bash
# One multi-GPU node: DeepSpeed's launcher starts one vlpdist process per GPU.
#
#   launch/deepspeed_node.sh pretrain|finetune CONFIG [key=value ...]
#
# NUM_GPUS: processes to start (default: the GPUs `nvidia-smi -L` lists, else 1);
# MASTER_PORT: the rendezvous port (default 29500; give each concurrent job its own).
set -euo pipefail

usage() {
    echo "usage: $0 pretrain|finetune CONFIG [key=value ...]" >&2
    exit 2
}
(($# >= 2)) || usage
command=$1
shift
case $command in
pretrain | finetune) ;;
*) usage ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $REPO/.venv/bin/deepspeed ]]; then PATH="$REPO/.venv/bin:$PATH"; fi

if [[ -z ${NUM_GPUS:-} ]]; then
    NUM_GPUS=0
    if command -v nvidia-smi >/dev/null; then
        NUM_GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    ((NUM_GPUS > 0)) || NUM_GPUS=1
fi
MASTER_PORT=${MASTER_PORT:-29500}

# deepspeed's launcher takes --module (not -m): each rank runs `python -m vlpdist ...`.
exec deepspeed --num_gpus "$NUM_GPUS" --master_port "$MASTER_PORT" --module vlpdist \
    "$command" "$@"
