"""One QLoRA training step of a Qwen2.5-7B-width classifier on CPU: peak live tensor bytes and autograd-saved bytes.
usage: measure.py CODE_ROOT PEFT_PATH|- LAYERS BATCH SEQ DROPOUT AUTOCAST(fp16|none) CKPT(1|0)"""
import os, sys, json, time
code, peft_path, layers, batch, seq, dropout, ac, ckpt = sys.argv[1:9]
if peft_path != "-":
    sys.path.insert(0, peft_path)
sys.path.insert(0, code)
layers, batch, seq, dropout, ckpt = int(layers), int(batch), int(seq), float(dropout), bool(int(ckpt))
import torch
torch.manual_seed(0)
from pathlib import Path
import peft, transformers, bitsandbytes
from qlora_helpers import modeling

folder = Path(f"/tmp/peak/ckpt_{layers}")
if not (folder / "config.json").is_file():
    from transformers import Qwen2Config, Qwen2ForSequenceClassification, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tm, pre_tokenizers
    cfg = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=layers, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=1024, num_labels=77, pad_token_id=0, eos_token_id=0,
                      bos_token_id=0, tie_word_embeddings=False)
    m = Qwen2ForSequenceClassification(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n: p.fill_(1.0)
            elif n.endswith("bias"): p.zero_()
            else: p.normal_(0, 0.02)
    tmp = folder.with_name(folder.name + ".tmp"); m.save_pretrained(tmp)
    tok = Tokenizer(tm.WordLevel({"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>")); tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(tmp)
    tmp.rename(folder); del m

compute = torch.float16 if ac == "fp16" else torch.float32
loaded = modeling.load_model(str(folder), "qlora", 77, compute_dtype=compute, lora_dropout=dropout,
                             gradient_checkpointing=ckpt, device="cpu")
model = loaded.model
model.train()
g = torch.Generator().manual_seed(1)
ids = torch.randint(1, 1024, (batch, seq), generator=g)
mask = torch.ones(batch, seq, dtype=torch.long)
mask[::4, seq // 2:] = 0  # some rows padded, as Banking77 batches are
ids[mask == 0] = 0
labels = torch.randint(0, 77, (batch,), generator=g)

params = {"trainable": 0, "frozen": 0}
for p in model.parameters():
    params["trainable" if p.requires_grad else "frozen"] += p.numel() * p.element_size()
trainable_dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})

# autograd-saved bytes outside the checkpointed layers (the checkpoint's own hooks take over inside)
saved = {}
def pack(t):
    try:
        st = t.untyped_storage(); saved[st.data_ptr()] = st.nbytes()
    except Exception:
        pass
    return t
import weakref
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary
class Live(TorchDispatchMode):
    """Bytes of the storages created in the mode and still alive; the peak and where it happened."""
    def __init__(self):
        super().__init__(); self.seen = WeakIdKeyDictionary(); self.cur = 0; self.peak = 0; self.phase = "forward"; self.peak_phase = None
    def _free(self, n):
        self.cur -= n
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                try:
                    st = t.untyped_storage()
                except Exception:
                    continue
                if st not in self.seen:
                    n = st.nbytes(); self.seen[st] = n; self.cur += n; weakref.finalize(st, self._free, n)
                    if self.cur > self.peak:
                        self.peak, self.peak_phase = self.cur, self.phase
        return out
with torch.no_grad():
    model(input_ids=ids[:1], attention_mask=mask[:1])  # one-time weight repacking off the books
mode = Live()
t0 = time.time()
with mode:
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.float16, enabled=(ac == "fp16")):
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
    loss = out.loss
    after_forward = mode.cur
    mode.phase = "backward"
    loss.backward()
    after_backward = mode.cur
peak = dict(peak_live=mode.peak, peak_phase=mode.peak_phase, after_forward=after_forward, after_backward=after_backward)
res = dict(code=code, peft=peft.__version__, transformers=transformers.__version__, torch=torch.__version__,
           layers=layers, batch=batch, seq=seq, dropout=dropout, autocast=ac, ckpt=ckpt, loss=float(loss),
           loss_dtype=str(out.logits.dtype), trainable_dtypes=trainable_dtypes, param_bytes=params,
           saved_outside_ckpt_bytes=sum(saved.values()), peak=peak, seconds=round(time.time() - t0, 1))
print("RESULT " + json.dumps(res))
