#!/usr/bin/env bash
# ftlab on a CUDA machine in under 10 minutes: a smoke test of fit on the GPU, a subset of the test suite,
# a 2-process NCCL run (with 2 or more GPUs), the training benchmarks, then a summary table.
#
#   bash tools/gpu_check.sh                        # on a machine with a GPU
#   FTLAB_GPU_CHECK_CPU=1 bash tools/gpu_check.sh  # the same steps on the CPU (a dry run of the script)
#
# Each step's output goes to $LOGS (default /tmp/ftlab_gpu_check) and is summarised at the end; a step
# that would pass the overall deadline (BUDGET seconds, default 570) is cut short by `timeout`.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FTLAB_FAST=1 MPLBACKEND=Agg
LOGS=${LOGS:-/tmp/ftlab_gpu_check}
BUDGET=${BUDGET:-570}
mkdir -p "$LOGS"
START=$SECONDS
SUMMARY=()

GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [[ "$GPUS" == 0 && -z "${FTLAB_GPU_CHECK_CPU:-}" ]]; then
    echo "no CUDA GPU here (torch.cuda.device_count() == 0); set FTLAB_GPU_CHECK_CPU=1 for a dry run on the CPU"
    exit 2
fi
DEVICE=$([[ "$GPUS" == 0 ]] && echo cpu || echo cuda)

# step NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (and never past the deadline), log it
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    ((limit > left)) && limit=$left
    if ((limit < 10)); then
        SUMMARY+=("$(printf '%-28s %-5s %5s  %s' "$name" SKIP - "no time left in the ${BUDGET} s budget")")
        return
    fi
    local begin=$SECONDS
    echo "==== $name (at most ${limit} s)"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    local status=PASS note
    note=$(grep -E "passed|failed|error" "$LOGS/$name.log" | tail -1)
    ((rc == 124)) && status=TIME && note="stopped after ${limit} s"
    ((rc != 0 && rc != 124)) && status=FAIL && note=${note:-$(tail -1 "$LOGS/$name.log")}
    tail -n 25 "$LOGS/$name.log"
    SUMMARY+=("$(printf '%-28s %-5s %5d  %s' "$name" "$status" $((SECONDS - begin)) "${note:0:90}")")
}

step info 60 python -m ftlab info

# fit on the device: every precision, checkpointing, accumulation, early stopping and lr_find on LoRA GPT-2
step fit_on_device 150 python - "$DEVICE" <<'EOF'
import sys, torch, ftlab
from ftlab.train import fit, lr_find
from ftlab.zoo import load_gpt2
device = torch.device(sys.argv[1])
assert ftlab.device().type == device.type, f"ftlab.device() is {ftlab.device()}, expected {device}"
vocab = load_gpt2()[0].config.vocab_size
ids = torch.randint(0, vocab, (64, 64), generator=torch.Generator().manual_seed(0))
batches = [{"input_ids": ids[i:i + 8], "labels": ids[i:i + 8]} for i in range(0, 64, 8)]
precisions = ["fp32", "bf16-mixed", "fp16-mixed", "bf16"]
losses = {}
for precision in precisions:
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same dropout masks with and without checkpointing
        model, _ = load_gpt2()
        ftlab.apply(model, "lora")
        history = fit(model, batches[:6], num_steps=12, lr=3e-3, precision=precision, grad_accum_steps=2,
                      gradient_checkpointing=checkpointing, eval_data=batches[6:], eval_every=4, patience=2,
                      progress=False)
        assert all(p.device.type == device.type for p in model.parameters())
        assert all(torch.isfinite(torch.tensor(history["loss"])))
        peak = torch.cuda.max_memory_allocated() / 1e6 if device.type == "cuda" else float("nan")
        print(f"{precision:>10s} checkpointing={checkpointing!s:5s} loss {history['loss'][0]:.3f} -> "
              f"{history['loss'][-1]:.3f}  best step {history['best_step']}  peak {peak:.0f} MB")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        losses[precision, checkpointing] = history["loss"]
    same = max(abs(a - b) / abs(b) for a, b in zip(losses[precision, True], losses[precision, False]))
    print(f"{precision:>10s} checkpointing changes the losses by at most {same:.1e} (relative)")
    assert same < 1e-3
model, _ = load_gpt2()
model.to(device)
result = lr_find(model, batches, num_steps=30, progress=False)
print(f"lr_find on the GPU: suggestion {result['suggestion']:.1e} after {len(result['losses'])} steps")
print("fit on", device, "passed")
EOF

# the test suite's training, measurement, method and alignment tests (FAST mode)
step tests 330 python -m pytest -q -x \
    tests/test_train.py tests/test_train_bad_inputs.py tests/test_train_early_stopping.py \
    tests/test_train_lr_find.py tests/test_train_scaling.py tests/test_distributed.py tests/test_measure.py \
    tests/test_lora.py tests/test_nf4.py tests/test_qlora.py tests/test_sft.py tests/test_dpo.py

# two processes with NCCL, one GPU each, against one process over the same global batch
if ((GPUS >= 2)); then
    step ddp_nccl_2_gpus 120 bash -c "python tools/torchrun.py -n 2 tests/test_distributed.py -- $LOGS/ddp.pt cuda && \
        cd tests && python -c \"import test_distributed as t; d = t.compare_with_one_process('$LOGS/ddp.pt', 'cuda'); \
        print('2 GPUs vs 1, max |difference| of the LoRA weights:', d); assert max(d.values()) < 1e-4\""
else
    SUMMARY+=("$(printf '%-28s %-5s %5s  %s' ddp_nccl_2_gpus SKIP - "needs 2 GPUs, this machine has $GPUS (gloo ran in tests)")")
fi

step bench_train 150 python tools/bench_train.py --device "$DEVICE" memory time

echo
echo "==== summary ($(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU dry run')"), $((SECONDS - START)) s of ${BUDGET} s; logs in $LOGS)"
printf '%-28s %-5s %5s  %s\n' step status s note
printf '%s\n' "${SUMMARY[@]}"
! printf '%s\n' "${SUMMARY[@]}" | grep -qE " (FAIL|TIME) "
