"""The 9f1f602 benchmark's speed cell on CPU (tiny 7B stand-in): live tensor bytes left between configs."""
import sys, gc, types, torch
root = sys.argv[1]; order = sys.argv[2].split(",")
sys.path.insert(0, root); sys.path.insert(0, root + "/bench")
import benchmark as B
from pathlib import Path

def live_bytes():
    gc.collect(); seen = {}
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor):
                st = o.untyped_storage(); seen[st.data_ptr()] = st.nbytes()
        except Exception:
            pass
    return sum(seen.values())

args = types.SimpleNamespace(device="cpu", only_configs=order, models_dir="/tmp/peak/models", work_dir="/tmp/peak/work")
shape = B.TINY["7B"]
folder = B.build_checkpoint(shape, Path(args.models_dir) / shape.name, "cpu")
loaded, info = B.load(folder, "qlora", torch.float32)
initial = B.capture_state(loaded.model)
specs = {s["name"]: s for s in B.speed_configs("qlora", args)}
data = {}
print("after load", live_bytes())
for name in order:
    spec = specs[name]; cfg = spec["cfg"]
    if spec["pad128"]:
        d = B.synthetic_dataset(600, shape.vocab_size, max_length=128, pad_to=128)
    else:
        d = B.synthetic_dataset(600, shape.vocab_size, max_length=cfg.max_length)
    before = live_bytes()
    rec = B.run_config(loaded, d, name=f"qlora:{name}", shape=shape, cfg=cfg, steps=3, warmup=1,
                       checkpointing=spec["ckpt"], lora_dropout=spec["dropout"], lora_r=16, peak_tflops=None,
                       initial_state=initial, out_dir=Path(args.work_dir))
    del d
    print(name, rec["status"], "batch", rec["batch_size"], "live before", before, "live after", live_bytes())
