"""Peak memory of HF logit caching (`distill.cache_topk.response_topk` via `teacher.cache_batch`),
from the model's shape and the batch: pure arithmetic, no torch, for the dry run.

The path runs in phases; the peak is the resident weights plus the largest phase:

1. the body's forward (no autograd, no KV cache) over g = max(1, chunk_tokens // max_seq_len)
   rows at a time (`teacher.cache_batch`): one decoder layer's temporaries at a time,
   g·S·(5·H + 3·I) values (the residual stream, its norm, the layer's input and output, and
   the MLP's gate, activation and up projections; attention's are smaller while I ≥ H; the
   5·H is what a Qwen2 layer was measured to hold), plus the g×S×S boolean attention mask;
2. its output: the last hidden states [g, S, H] and their picked response positions;
3. one chunk of c = min(chunk_tokens, the forward's positions) positions: its logits over
   the tokenizer's rows in the model's dtype and one fp32 buffer the log-softmax, top-k and
   tail work in (in place: 4 bytes per logit in fp32, 2 + 4 in bf16/fp16 while it converts),
   beside the picked positions and the results so far (fp32 log-probs, int64 ids: 12·k + 4
   bytes per position);
4. the end: the results concatenated (twice 12·k + 4 per position while the chunk lists live),
   then scattered to [B, W, k] for `encode_rows` with the Arrow rows (6·k + 8 per position).

Without chunking (the old `.logits` path, `unchunked_logits_bytes`) the batch's B·S·rows logits
and their fp32 copies were held at once, and the body ran over all B rows together.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CHUNK_TOKENS = 4096  # positions per chunk: 4,096 × 152,064 rows × 6 B ≈ 3.5 GiB
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
RESULT_BYTES_PER_K = 4 + 8  # fp32 log-prob + int64 id per cached entry, before encoding
ROW_BYTES_PER_K = 2 + 4  # as stored: 16-bit value + int32 id


@dataclass(frozen=True)
class CacheShape:
    """What HF caching's memory depends on. `response_positions` N: the batch's cached positions
    (Σ response lengths, ≤ batch × response_width); `response_width` W: the longest response
    (None: seq, an upper bound); `intermediate`: the MLP's width (None: 4 × hidden);
    `kv_dim`: key/value width (None: hidden, no GQA: an upper bound for the weights)."""

    hidden: int
    layers: int
    vocab_rows: int  # output rows the cache reads: the tokenizer's, never the padding
    batch: int
    seq: int
    response_positions: int
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    top_k: int = 64
    dtype: str = "bf16"
    intermediate: int | None = None
    kv_dim: int | None = None
    response_width: int | None = None
    output_rows: int | None = None  # rows of the checkpoint's output layer (None: vocab_rows)
    max_seq_len: int | None = None  # what sets rows per forward (None: seq)
    tied: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} unknown; valid: {', '.join(DTYPE_BYTES)}")
        for name in ("hidden", "layers", "vocab_rows", "batch", "seq", "chunk_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.response_positions <= self.batch * self.seq:
            raise ValueError(f"response_positions must lie in [0, batch × seq = "
                             f"{self.batch * self.seq}], got {self.response_positions}")


@dataclass(frozen=True)
class CachePeak:
    """Bytes of each phase (see the module doc); `peak_bytes` = weights + the largest."""

    weights_bytes: int
    body_bytes: int
    hidden_bytes: int
    chunk_bytes: int
    output_bytes: int

    @property
    def transient_bytes(self) -> int:
        """Above the resident weights: what caching a batch adds."""
        return max(self.body_bytes, self.hidden_bytes, self.chunk_bytes, self.output_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + self.transient_bytes


def weight_bytes(s: CacheShape) -> int:
    """The teacher's parameters: embedding, output layer (unless tied), attention, MLP, norms."""
    inter = s.intermediate or 4 * s.hidden
    kv = s.kv_dim or s.hidden
    per_layer = 2 * s.hidden * s.hidden + 2 * s.hidden * kv + 3 * s.hidden * inter + 2 * s.hidden
    rows = s.output_rows or s.vocab_rows
    embed = rows * s.hidden * (1 if s.tied else 2)
    return DTYPE_BYTES[s.dtype] * (embed + s.layers * per_layer + s.hidden)


def rows_per_forward(s: CacheShape) -> int:
    """Rows the body runs at once: as many sequences as fit chunk_tokens (at least one)."""
    return min(s.batch, max(1, s.chunk_tokens // (s.max_seq_len or s.seq)))


def hf_cache_peak(s: CacheShape) -> CachePeak:
    """Peak bytes of HF logit caching of one batch on one device (see the module doc). Phases
    1-3 are those of the batch's last forward, beside the results of the forwards before it."""
    d = DTYPE_BYTES[s.dtype]
    inter = s.intermediate or 4 * s.hidden
    per_result = RESULT_BYTES_PER_K * s.top_k + 4
    width = s.response_width or s.seq
    g = rows_per_forward(s)
    n = s.response_positions
    n_g = min(n, g * width)  # the positions one forward caches, at most
    before = (n - n_g) * per_result
    body = g * s.seq * d * (5 * s.hidden + 3 * inter) + g * s.seq * s.seq + before
    hidden = (g * s.seq + n_g) * s.hidden * d + before
    chunk = min(s.chunk_tokens, n_g) * s.vocab_rows * (4 if d == 4 else d + 4)
    # the last chunk's buffer is freed before the results are joined: phases 3 and 4 apart
    phase3 = n_g * s.hidden * d + chunk + n * per_result
    padded = s.batch * width * (per_result + 8)
    phase4 = max(2 * n * per_result,
                 n * per_result + padded + n * (ROW_BYTES_PER_K * s.top_k + 8))
    return CachePeak(weights_bytes=weight_bytes(s), body_bytes=body, hidden_bytes=hidden,
                     chunk_bytes=phase3, output_bytes=phase4)


def unchunked_logits_bytes(s: CacheShape) -> int:
    """What the `.logits` path held at once: B·S·rows logits in the model's dtype, their
    response positions gathered, and fp32 log-softmax copies of those (the bound's baseline)."""
    d = DTYPE_BYTES[s.dtype]
    rows = s.output_rows or s.vocab_rows
    width = s.response_width or s.seq
    picked = s.batch * width * rows
    return s.batch * s.seq * rows * d + picked * d + 2 * picked * 4


def shape_from_hf_config(config: dict, *, tokenizer_rows: int | None, batch: int,
                         max_seq_len: int, max_response_tokens: int,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS, top_k: int = 64,
                         dtype: str = "bf16") -> CacheShape:
    """The worst-case CacheShape of a batch for a checkpoint's config.json (a dict): every
    sequence max_seq_len long with a full response (+ its end of turn). `tokenizer_rows`: the
    tokenizer's length (None: the config's vocab_size, no padding known)."""
    hidden = int(config["hidden_size"])
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    rows = int(config["vocab_size"])
    width = min(max_seq_len - 1, max_response_tokens + 1)
    return CacheShape(hidden=hidden, layers=int(config["num_hidden_layers"]),
                      vocab_rows=min(rows, tokenizer_rows or rows), output_rows=rows,
                      batch=batch, seq=max_seq_len, max_seq_len=max_seq_len,
                      response_positions=batch * width, response_width=width,
                      chunk_tokens=chunk_tokens, top_k=top_k, dtype=dtype,
                      intermediate=config.get("intermediate_size"), kv_dim=kv,
                      tied=bool(config.get("tie_word_embeddings", False)))
