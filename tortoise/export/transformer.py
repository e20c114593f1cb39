"""The AR model's GPT-2 as one graph per runtime, built op by op from the network's weights: one copy of the weights
serves the prompt pass, every decode step and the latent pass, and the KV cache is written in place.

Why built and not traced: a traced graph has one shape of cache traffic. The prompt pass (no past), the decode step
(one position onto a past) and the latent pass (a whole sequence) were three traced graphs, each with its own 1.7 GB
copy of the weights, and the step's cache was a graph input concatenated with the new position, so every step copied
the whole cache. Each runtime has an attention op that owns a cache instead:

- ONNX Runtime: ``com.microsoft.GroupQueryAttention`` (CPU and CUDA kernels). With its ``past`` and ``present``
  bound to the same buffer (io_binding) it writes the new positions into the buffer at ``past_length`` and attends
  to the first ``past_length + S`` positions only: no copy, and a step at position 500 reads what it must.
- OpenVINO: the cache is the model's state (``ReadValue`` -> ``Gather(beam_idx)`` -> ``Concat`` -> SDPA ->
  ``Assign``), the pattern its CPU plugin fuses into one attention node that keeps the cache in place (and reorders
  rows through ``beam_idx`` without copying: one prompt broadcast to every sample).

Both graphs: ``embeds`` (B, S, d) — the token and position embeddings, added in torch from the tables
``embeddings.npz`` beside the graph (they are lookups) — and ``past_length`` (1,) -> ``hidden`` (B, S, d) final-normed
hidden states (``final_norm(ln_f(x))``: the latent pass's output) and ``logits`` (B, V) of the last position.

Int8 weights (OpenVINO): every GPT-2 linear layer as int8 with one float32 scale per output channel (symmetric,
round to nearest), in the form OpenVINO decompresses inside its matmul; the mel head stays float32.
"""
from pathlib import Path

import numpy as np
import torch

EMBEDDINGS = "embeddings.npz"


def _np(t):
    return t.detach().float().cpu().numpy()


def layers_of(net):
    """Per block: the weights the graphs need, float32 numpy, linear weights as [out, in]."""
    out = []
    for block in net.gpt.h:
        out.append({
            "ln_1": (_np(block.ln_1.weight), _np(block.ln_1.bias)),
            "c_attn": (_np(block.attn.c_attn.weight).T, _np(block.attn.c_attn.bias)),  # Conv1D holds [in, out]
            "attn_proj": (_np(block.attn.c_proj.weight).T, _np(block.attn.c_proj.bias)),
            "ln_2": (_np(block.ln_2.weight), _np(block.ln_2.bias)),
            "c_fc": (_np(block.mlp.c_fc.weight).T, _np(block.mlp.c_fc.bias)),
            "mlp_proj": (_np(block.mlp.c_proj.weight).T, _np(block.mlp.c_proj.bias)),
        })
    return out


LINEARS = ("c_attn", "attn_proj", "c_fc", "mlp_proj")


def quantize_int8(w):
    """[out, in] float32 -> (int8 [out, in], float32 scales [out, 1]): symmetric per output channel."""
    scales = np.maximum(np.abs(w).max(axis=1, keepdims=True) / 127.0, 1e-12).astype(np.float32)
    return np.clip(np.rint(w / scales), -127, 127).astype(np.int8), scales


def fake_quantize(net):
    """The network with every GPT-2 linear weight replaced by its int8 rounding (what the int8 graph computes with),
    in place: the reference an int8 graph is verified against. Returns ``net``."""
    for block in net.gpt.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            q, scales = quantize_int8(_np(layer.weight).T)
            layer.weight.data.copy_(torch.from_numpy((q.astype(np.float32) * scales).T.copy()))
    return net


def write_embeddings(net, directory):
    """The embedding tables the torch side adds up before each graph call."""
    np.savez(Path(directory) / EMBEDDINGS, text=_np(net.text_embedding.weight),
             text_pos=_np(net.text_pos_embedding.emb.weight), mel=_np(net.mel_embedding.weight),
             mel_pos=_np(net.mel_pos_embedding.emb.weight))


class Embeddings:
    """The embedding tables of one exported transformer, and the sums the graph takes as ``embeds``: the same
    lookups `UnifiedVoice` makes (``compute_embeddings``, ``_mel_step_embedding``, the latent pass's inputs)."""

    def __init__(self, tables, start_text_token, stop_text_token, start_mel_token, stop_mel_token):
        self.text, self.text_pos = tables["text"], tables["text_pos"]
        self.mel, self.mel_pos = tables["mel"], tables["mel_pos"]
        self.start_text_token, self.stop_text_token = start_text_token, stop_text_token
        self.start_mel_token, self.stop_mel_token = start_mel_token, stop_mel_token

    @classmethod
    def load(cls, directory, model):
        """The tables in ``directory``, with the start/stop tokens of ``model`` (a `UnifiedVoice`, or any object with
        its ``start_text_token``, ``stop_text_token``, ``start_mel_token`` and ``stop_mel_token``)."""
        with np.load(Path(directory) / EMBEDDINGS) as npz:
            tables = {k: torch.from_numpy(npz[k]) for k in ("text", "text_pos", "mel", "mel_pos")}
        return cls(tables, model.start_text_token, model.stop_text_token, model.start_mel_token,
                   model.stop_mel_token)

    def _text(self, text_tokens):  # (B, t) -> (B, t + 2, d): [start, text..., stop] + positions
        start = torch.full_like(text_tokens[:, :1], self.start_text_token)
        stop = torch.full_like(text_tokens[:, :1], self.stop_text_token)
        ids = torch.cat([start, text_tokens.long(), stop], dim=1).cpu()
        return self.text[ids] + self.text_pos[:ids.shape[1]]

    def _mel(self, ids, first_position=0):  # (B, m) -> (B, m, d)
        ids = ids.long().cpu()
        return self.mel[ids] + self.mel_pos[first_position:first_position + ids.shape[1]]

    def prompt(self, cond_latent, text_tokens, mel_tokens):
        """(B, d), (B, t), (B, n) start mel token [+ input tokens] -> (B, 1 + t + 2 + n, d)."""
        return torch.cat([cond_latent.float().cpu().unsqueeze(1), self._text(text_tokens), self._mel(mel_tokens)], 1)

    def step(self, tokens, mel_position):
        """(B,) at one mel position -> (B, 1, d)."""
        return self._mel(tokens.reshape(-1, 1), int(mel_position))

    def latent(self, cond_latent, text_tokens, codes):
        """The latent pass's sequence for ``codes`` (B, m) -> (embeds (B, 1 + t + 2 + m + 2, d), first): the latents
        are ``hidden[:, first:first + m]`` (the states that predicted each code)."""
        start = torch.full_like(codes[:, :1], self.start_mel_token)
        stop = torch.full_like(codes[:, :1], self.stop_mel_token)
        embeds = torch.cat([cond_latent.float().cpu().unsqueeze(1), self._text(text_tokens),
                            self._mel(torch.cat([start, codes.long(), stop], dim=1))], dim=1)
        return embeds, 1 + text_tokens.shape[1] + 2


def dims(net):
    cfg = net.gpt.config
    return cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.n_layer, cfg.layer_norm_epsilon


def cache_names(n_layers, prefix):
    """``{prefix}.{i}.key``, ``{prefix}.{i}.value`` per layer (ONNX inputs "past", outputs "present")."""
    return [f"{prefix}.{i}.{kind}" for i in range(n_layers) for kind in ("key", "value")]


# ---------------------------------------------------------------------------------------------------------------
# ONNX (ONNX Runtime)
# ---------------------------------------------------------------------------------------------------------------
def build_onnx(net, path, *, half=False):
    """Write the graph for ONNX Runtime to ``path`` (weights in ``path.data``) and the embedding tables beside it.
    Cache inputs ``past.{i}.key|value`` (B, H, C, D) and outputs ``present.*`` are meant to share one buffer of any
    capacity C >= past_length + S."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d, heads, head_dim, n_layers, eps = dims(net)
    ftype = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    fdtype = np.float16 if half else np.float32
    inits, nodes = [], []

    def const(name, array):
        array = np.asarray(array)  # (np.ascontiguousarray would make a 0-d index 1-d)
        inits.append(numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(), name))
        return name

    def op(kind, inputs, n_out=1, domain="", **attrs):
        name = f"n{len(nodes)}_{kind}"
        outs = [f"{name}:{i}" for i in range(n_out)]
        nodes.append(helper.make_node(kind, inputs, outs, name=name, domain=domain, **attrs))
        return outs[0] if n_out == 1 else outs

    def layer_norm(x, prefix, weights):
        g, b = weights
        return op("LayerNormalization", [x, const(prefix + ".g", g.astype(fdtype)), const(prefix + ".b",
                                                                                          b.astype(fdtype))],
                  axis=-1, epsilon=eps)

    def linear(x, prefix, weights):
        w, b = weights  # [out, in]
        y = op("MatMul", [x, const(prefix + ".w", w.T.astype(fdtype))])
        return op("Add", [y, const(prefix + ".b", b.astype(fdtype))])

    # lengths for GroupQueryAttention: total (past + S) as an int32 scalar, and seqlens_k = total - 1 per row
    shape = op("Shape", ["embeds"])
    batch = op("Slice", [shape, const("c.0", np.array([0])), const("c.1", np.array([1]))])
    seq = op("Slice", [shape, "c.1", const("c.2", np.array([2]))])
    total = op("Add", ["past_length", seq])
    total32 = op("Cast", [op("Squeeze", [total, const("c.axes0", np.array([0]))])], to=TensorProto.INT32)
    seqlens = op("Cast", [op("Expand", [op("Sub", [total, "c.1"]), batch])], to=TensorProto.INT32)

    x = "embeds"
    for i, layer in enumerate(layers_of(net)):
        p = f"h.{i}"
        qkv = linear(layer_norm(x, p + ".ln_1", layer["ln_1"]), p + ".c_attn", layer["c_attn"])
        q, k, v = op("Split", [qkv, const(p + ".split", np.array([d, d, d]))], n_out=3, axis=-1)
        attn, _, _ = op("GroupQueryAttention", [q, k, v, f"past.{i}.key", f"past.{i}.value", seqlens, total32],
                        n_out=3, domain="com.microsoft", num_heads=heads, kv_num_heads=heads)
        nodes[-1].output[1:] = [f"present.{i}.key", f"present.{i}.value"]
        x = op("Add", [x, linear(attn, p + ".attn_proj", layer["attn_proj"])])
        h = op("Gelu", [linear(layer_norm(x, p + ".ln_2", layer["ln_2"]), p + ".c_fc", layer["c_fc"])],
               approximate="tanh")
        x = op("Add", [x, linear(h, p + ".mlp_proj", layer["mlp_proj"])])
    x = layer_norm(x, "ln_f", (_np(net.gpt.ln_f.weight), _np(net.gpt.ln_f.bias)))
    hidden = layer_norm(x, "final_norm", (_np(net.final_norm.weight), _np(net.final_norm.bias)))
    nodes.append(helper.make_node("Identity", [hidden], ["hidden"], name="hidden"))
    last = op("Gather", [hidden, const("c.last", np.array(-1))], axis=1)
    logits = linear(last, "mel_head", (_np(net.mel_head.weight), _np(net.mel_head.bias)))
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits"))

    cache_shape = ["batch", heads, "capacity", head_dim]
    inputs = [helper.make_tensor_value_info("embeds", ftype, ["batch", "seq", d]),
              helper.make_tensor_value_info("past_length", TensorProto.INT64, [1])]
    inputs += [helper.make_tensor_value_info(n, ftype, cache_shape) for n in cache_names(n_layers, "past")]
    outputs = [helper.make_tensor_value_info("hidden", ftype, ["batch", "seq", d]),
               helper.make_tensor_value_info("logits", ftype, ["batch", net.mel_head.out_features])]
    outputs += [helper.make_tensor_value_info(n, ftype, cache_shape) for n in cache_names(n_layers, "present")]
    graph = helper.make_graph(nodes, "tortoise_ar_transformer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="tortoise-export")
    model.ir_version = 10
    path = Path(path)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    write_embeddings(net, path.parent)


# ---------------------------------------------------------------------------------------------------------------
# OpenVINO
# ---------------------------------------------------------------------------------------------------------------
def build_openvino(net, xml_path, *, int8=False):
    """Write the stateful OpenVINO IR to ``xml_path`` (+ .bin) and the embedding tables beside it. Inputs
    ``embeds``, ``past_length`` and ``beam_idx`` (B,) int32: the row of the cache each row continues from (the
    prompt's rows at the first step, 0..B-1 after it). The cache variables are ``past.{i}.key|value``."""
    import openvino as ov
    import openvino.opset6 as o6
    import openvino.opset13 as ops

    d, heads, head_dim, n_layers, eps = dims(net)
    embeds = ops.parameter([-1, -1, d], np.float32, name="embeds")
    past_length = ops.parameter([1], np.int64, name="past_length")
    beam_idx = ops.parameter([-1], np.int32, name="beam_idx")
    for param, name in ((embeds, "embeds"), (past_length, "past_length"), (beam_idx, "beam_idx")):
        param.output(0).get_tensor().set_names({name})

    def c(value, dtype=None):
        return ops.constant(np.asarray(value, dtype=dtype))

    def layer_norm(x, weights):
        g, b = weights
        y = ops.mvn(x, c([-1], np.int64), True, eps, "inside_sqrt")
        return ops.add(ops.multiply(y, c(g)), c(b))

    def linear(x, weights, quantize=int8):
        w, b = weights  # [out, in]
        if quantize:
            q, scales = quantize_int8(w)
            w_node = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), c(scales))
        else:
            w_node = c(w)
        return ops.add(ops.matmul(x, w_node, False, True), c(b))

    # (S, L) additive mask: key j visible to query i iff j <= past_length + i
    shape = ops.shape_of(embeds)
    seq = ops.gather(shape, c([1], np.int64), c(0, np.int64))
    zero, one = c(0, np.int64), c(1, np.int64)
    scalar = c([0], np.int64)
    queries = ops.add(ops.range(zero, ops.squeeze(seq, scalar), one, "i64"), ops.squeeze(past_length, scalar))
    keys = ops.range(zero, ops.squeeze(ops.add(seq, past_length), scalar), one, "i64")
    visible = ops.less_equal(ops.unsqueeze(keys, c([0], np.int64)), ops.unsqueeze(queries, c([1], np.int64)))
    mask = ops.select(visible, c(0.0, np.float32), c(-np.inf, np.float32))

    head_shape = c([0, 0, heads, head_dim], np.int64)
    to_heads = c([0, 2, 1, 3], np.int64)

    def split_heads(t):  # (B, S, d) -> (B, H, S, D)
        return ops.transpose(ops.reshape(t, head_shape, True), to_heads)

    assigns = []

    def with_past(t, variable):
        past = o6.read_value(ops.broadcast(c(0.0, np.float32), ops.concat(
            [ops.gather(shape, c([0], np.int64), c(0, np.int64)), c([heads, 0, head_dim], np.int64)], 0)),
            variable, np.float32, [-1, heads, -1, head_dim])
        full = ops.concat([ops.gather(past, beam_idx, c(0, np.int64)), t], 2)
        assigns.append(o6.assign(full, variable))
        return full

    x = embeds
    for i, layer in enumerate(layers_of(net)):
        qkv = linear(layer_norm(x, layer["ln_1"]), layer["c_attn"])
        q, k, v = ops.split(qkv, c(-1, np.int64), 3).outputs()
        k = with_past(split_heads(k), f"past.{i}.key")
        v = with_past(split_heads(v), f"past.{i}.value")
        attn = ops.scaled_dot_product_attention(split_heads(q), k, v, mask, causal=False)
        attn = ops.reshape(ops.transpose(attn, to_heads), c([0, 0, d], np.int64), True)
        x = ops.add(x, linear(attn, layer["attn_proj"]))
        h = ops.gelu(linear(layer_norm(x, layer["ln_2"]), layer["c_fc"]), "tanh")
        x = ops.add(x, linear(h, layer["mlp_proj"]))
    x = layer_norm(x, (_np(net.gpt.ln_f.weight), _np(net.gpt.ln_f.bias)))
    hidden = layer_norm(x, (_np(net.final_norm.weight), _np(net.final_norm.bias)))
    last = ops.gather(hidden, c(-1, np.int64), c(1, np.int64))
    logits = linear(last, (_np(net.mel_head.weight), _np(net.mel_head.bias)), quantize=False)
    results = []
    for node, name in ((hidden, "hidden"), (logits, "logits")):
        result = ops.result(node)
        result.output(0).get_tensor().set_names({name})
        node.output(0).get_tensor().set_names({name})
        results.append(result)
    model = ov.Model(results, assigns, [embeds, past_length, beam_idx], "tortoise_ar_transformer")
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    write_embeddings(net, Path(xml_path).parent)
