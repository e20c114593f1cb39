"""Tortoise's networks as the files tortoise.cpp (balisujohn/tortoise.cpp, a GGML implementation) loads, and as GGUF.

tortoise.cpp reads three model files and one file per voice (its ``main.cpp`` ``*_model_load`` functions are the
specification this module is written from)::

    ggml-model.bin             the autoregressive GPT-2 (UnifiedVoice's transformer, embeddings and mel head)
    ggml-diffusion-model.bin   the diffusion decoder's trunk, plus ONE voice's diffusion conditioning latent
    ggml-vocoder-model.bin     UnivNet (weight norm folded)
    VOICE.bin                  a voice's autoregressive conditioning latent: model_dim float32 values, no header

Each model file is GGML's legacy container: uint32 magic ``0x67676d6c``, then for every tensor
``int32 n_dims, int32 len(name), int32 ttype, int32 ne[n_dims], name bytes, data`` (little-endian, ``ne[0]`` the
innermost dimension, i.e. the torch shape reversed), until the end of the file. What tortoise.cpp's loaders expect:

- **No hyper-parameter header.** The autoregressive loader's hparams block is commented out and the other two never
  had one: the first int32 after the magic is already a tensor's ``n_dims``. The sizes are hard-coded in main.cpp
  (30 layers, width 1024, 256 text rows, 8194 mel rows, ...), so a checkpoint of any other shape cannot be loaded by
  it: `check_tortoise_cpp` refuses such a network in one line instead of writing a file tortoise.cpp rejects.
- **Every tensor float32** (ttype 0): each loader declares its tensors ``GGML_TYPE_F32`` and checks the byte size;
  where tortoise.cpp computes in f16 (the diffusion convolutions) it casts inside its graph.
- **Names from the released state dicts**, except the GPT-2 stack, which it names as the original's inference model
  does: ``gpt.h.N.*`` -> ``inference_model.transformer.h.N.*``, ``gpt.ln_f`` -> ``inference_model.transformer.ln_f``,
  ``final_norm`` -> ``inference_model.lm_head.0``, ``mel_head`` -> ``inference_model.lm_head.1``. GPT-2's Conv1D
  weights are stored as they are ([in, out]), nn.Linear ones as [out, in].
- **Size-1 axes dropped**: it declares kernel-1 convolutions (attention ``qkv`` / ``proj_out``, ``integrating_conv``,
  the ResBlocks' ``in_layers.2``) as matrices and ``unconditioned_embedding`` as a vector, so those torch axes of size
  1 are squeezed away; values are not reordered.
- The diffusion file carries the voice's 2048-value diffusion latent as ``diffusion_conditioning_latent``: tortoise.cpp
  reads a voice's diffusion latent from there, not from the voice ``.bin``.

Its loaders ignore tensors they do not know only by failing (``unknown tensor``) and never check that every tensor
came: this writer emits exactly the set each loader declares (``tortoise_cpp_shapes``).

GGUF (`write_gguf`, PyPI's ``gguf``): the same tensors under the same names, with the network's configuration as
``tortoise.*`` metadata, for tools that read GGUF; written for any configuration (no tortoise.cpp size check).
"""
import hashlib
import struct
from pathlib import Path

import numpy as np
import torch

from tortoise.utils.staging import write_atomically

GGML_FILE_MAGIC = 0x67676D6C  # "ggml" as a little-endian uint32 (GGML_FILE_MAGIC in ggml.h)
GGML_TYPE_F32 = 0
GGML_TYPE_F16 = 1
NETWORKS = ("autoregressive", "diffusion", "vocoder")
MODEL_FILES = {"autoregressive": "ggml-model.bin", "diffusion": "ggml-diffusion-model.bin",
               "vocoder": "ggml-vocoder-model.bin"}
GGUF_FILES = {name: f"tortoise-{name}.gguf" for name in NETWORKS}
DIFFUSION_LATENT = "diffusion_conditioning_latent"
GGUF_ARCH = "tortoise"


class GgmlError(ValueError):
    """A network or voice cannot be written as tortoise.cpp reads it; the message is one line saying why."""


# ---------------------------------------------------------------------------------------------------------------
# Tensor maps: our networks -> the names and layouts tortoise.cpp declares
# ---------------------------------------------------------------------------------------------------------------
def ggml_layout(t):
    """float32 numpy array in torch (row-major) order with size-1 axes dropped (tortoise.cpp declares kernel-1
    convolutions as matrices), at least one axis kept."""
    t = t.detach().to("cpu", torch.float32).contiguous()
    shape = [n for n in t.shape if n != 1] or [1]
    return t.reshape(shape).numpy()


_AR_RENAMES = (("gpt.h.", "inference_model.transformer.h."), ("gpt.ln_f.", "inference_model.transformer.ln_f."),
               ("final_norm.", "inference_model.lm_head.0."), ("mel_head.", "inference_model.lm_head.1."))
_AR_KEPT = ("text_embedding.weight", "text_pos_embedding.emb.weight", "mel_embedding.weight",
            "mel_pos_embedding.emb.weight")


def autoregressive_tensors(net):
    """UnifiedVoice -> {tortoise.cpp name: tensor}: the GPT-2 stack, final norms, mel head and the four embeddings.
    The conditioning encoder and text head are left out (tortoise.cpp reads the voice latent precomputed)."""
    out = {}
    for key, value in net.state_dict().items():
        for ours, theirs in _AR_RENAMES:
            if key.startswith(ours):
                out[theirs + key[len(ours):]] = value
                break
        else:
            if key in _AR_KEPT:
                out[key] = value
    return out


_DIFFUSION_PREFIXES = ("latent_conditioner.", "code_norm.", "time_embed.", "conditioning_timestep_integrator.",
                       "inp_block.", "integrating_conv.", "layers.", "out.")


def diffusion_tensors(net, diffusion_latent):
    """DiffusionTts + a voice's diffusion latent (1, 2 * model_channels) -> {tortoise.cpp name: tensor}. The code
    embedding / converter and the conditioning encoder (contextual_embedder) are left out: tortoise.cpp starts from
    AR latents and the precomputed voice latent."""
    out = {k: v for k, v in net.state_dict().items() if k.startswith(_DIFFUSION_PREFIXES)}
    out["unconditioned_embedding"] = net.state_dict()["unconditioned_embedding"]
    width = 2 * net.model_channels
    latent = diffusion_latent.detach().float().reshape(-1)
    if latent.numel() != width:
        raise GgmlError(f"the voice's diffusion latent has {latent.numel()} values, this diffusion model takes "
                        f"{width}: compute it with these models (tortoise-get-conditioning-latents --models_dir)")
    out[DIFFUSION_LATENT] = latent.reshape(1, width)
    return out


def vocoder_tensors(net):
    """UnivNetGenerator -> its whole (weight-norm folded) state dict, which is what tortoise.cpp names."""
    return dict(net.state_dict())


def network_tensors(network, net, diffusion_latent=None):
    """{name: float32 numpy array in ggml layout} of ``network`` as tortoise.cpp names it."""
    if network == "autoregressive":
        tensors = autoregressive_tensors(net)
    elif network == "diffusion":
        if diffusion_latent is None:
            raise GgmlError("ggml-diffusion-model.bin holds a voice's diffusion latent (tortoise.cpp reads it from "
                            "there): pass --voice NAME or --voice FILE.pth")
        tensors = diffusion_tensors(net, diffusion_latent)
    elif network == "vocoder":
        tensors = vocoder_tensors(net)
    else:
        raise GgmlError(f"tortoise.cpp has no {network!r} model; choose from {', '.join(NETWORKS)}")
    return {name: ggml_layout(t) for name, t in tensors.items()}


# ---------------------------------------------------------------------------------------------------------------
# What tortoise.cpp's loaders declare (main.cpp, hard-coded for the released sizes)
# ---------------------------------------------------------------------------------------------------------------
def _ne(shape):
    return tuple(reversed(shape))


def _autoregressive_shapes(layers=30, dim=1024, text_rows=256, text_positions=404, mel_rows=8194,
                           mel_positions=608):
    shapes = {"text_embedding.weight": (text_rows, dim), "text_pos_embedding.emb.weight": (text_positions, dim),
              "mel_embedding.weight": (mel_rows, dim), "mel_pos_embedding.emb.weight": (mel_positions, dim),
              "inference_model.transformer.ln_f.weight": (dim,), "inference_model.transformer.ln_f.bias": (dim,),
              "inference_model.lm_head.0.weight": (dim,), "inference_model.lm_head.0.bias": (dim,),
              "inference_model.lm_head.1.weight": (mel_rows, dim), "inference_model.lm_head.1.bias": (mel_rows,)}
    for i in range(layers):
        p = f"inference_model.transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (dim,), p + "ln_1.bias": (dim,),
                       p + "attn.c_attn.weight": (dim, 3 * dim), p + "attn.c_attn.bias": (3 * dim,),
                       p + "attn.c_proj.weight": (dim, dim), p + "attn.c_proj.bias": (dim,),
                       p + "ln_2.weight": (dim,), p + "ln_2.bias": (dim,),
                       p + "mlp.c_fc.weight": (dim, 4 * dim), p + "mlp.c_fc.bias": (4 * dim,),
                       p + "mlp.c_proj.weight": (4 * dim, dim), p + "mlp.c_proj.bias": (dim,)})
    return shapes


def _attention_shapes(prefix, ch, heads):
    return {prefix + "norm.weight": (ch,), prefix + "norm.bias": (ch,), prefix + "qkv.weight": (3 * ch, ch),
            prefix + "qkv.bias": (3 * ch,), prefix + "proj_out.weight": (ch, ch), prefix + "proj_out.bias": (ch,),
            prefix + "relative_pos_embeddings.relative_attention_bias.weight": (32, heads)}


def _resblock_shapes(prefix, ch):
    return {prefix + "in_layers.0.weight": (ch,), prefix + "in_layers.0.bias": (ch,),
            prefix + "in_layers.2.weight": (ch, ch), prefix + "in_layers.2.bias": (ch,),
            prefix + "emb_layers.1.weight": (2 * ch, ch), prefix + "emb_layers.1.bias": (2 * ch,),
            prefix + "out_layers.0.weight": (ch,), prefix + "out_layers.0.bias": (ch,),
            prefix + "out_layers.3.weight": (ch, ch, 3), prefix + "out_layers.3.bias": (ch,)}


def _diffusion_shapes(ch=1024, heads=16, layers=10, in_channels=100, out_channels=200, latent_channels=1024):
    shapes = {DIFFUSION_LATENT: (2 * ch,), "unconditioned_embedding": (ch,),
              "latent_conditioner.0.weight": (ch, latent_channels, 3), "latent_conditioner.0.bias": (ch,),
              "code_norm.weight": (ch,), "code_norm.bias": (ch,),
              "time_embed.0.weight": (ch, ch), "time_embed.0.bias": (ch,),
              "time_embed.2.weight": (ch, ch), "time_embed.2.bias": (ch,),
              "inp_block.weight": (ch, in_channels, 3), "inp_block.bias": (ch,),
              "integrating_conv.weight": (ch, 2 * ch), "integrating_conv.bias": (ch,),
              "out.0.weight": (ch,), "out.0.bias": (ch,),
              "out.2.weight": (out_channels, ch, 3), "out.2.bias": (out_channels,)}
    for i in range(1, 5):
        shapes.update(_attention_shapes(f"latent_conditioner.{i}.", ch, heads))
    for i in range(3):
        shapes.update(_resblock_shapes(f"conditioning_timestep_integrator.{i}.resblk.", ch))
        shapes.update(_attention_shapes(f"conditioning_timestep_integrator.{i}.attn.", ch, heads))
    for i in range(layers):
        shapes.update(_resblock_shapes(f"layers.{i}.resblk.", ch))
        shapes.update(_attention_shapes(f"layers.{i}.attn.", ch, heads))
    for i in range(layers, layers + 3):
        shapes.update(_resblock_shapes(f"layers.{i}.", ch))
    return shapes


def _vocoder_shapes(noise=64, ch=32, mel=100, hidden=64, strides=(8, 8, 4), lvc_layers=4):
    shapes = {"conv_pre.weight": (ch, noise, 7), "conv_pre.bias": (ch,), "conv_post.1.weight": (ch, 7),
              "conv_post.1.bias": (1,)}
    for i, stride in enumerate(strides):
        p = f"res_stack.{i}."
        kp = p + "kernel_predictor."
        shapes.update({kp + "input_conv.0.weight": (hidden, mel, 5), kp + "input_conv.0.bias": (hidden,),
                       kp + "kernel_conv.weight": (ch * 2 * ch * 3 * lvc_layers, hidden, 3),
                       kp + "kernel_conv.bias": (ch * 2 * ch * 3 * lvc_layers,),
                       kp + "bias_conv.weight": (2 * ch * lvc_layers, hidden, 3),
                       kp + "bias_conv.bias": (2 * ch * lvc_layers,),
                       p + "convt_pre.1.weight": (ch, ch, 2 * stride), p + "convt_pre.1.bias": (ch,)})
        for c in range(3):
            for j in (1, 3):
                shapes[kp + f"residual_convs.{c}.{j}.weight"] = (hidden, hidden, 3)
                shapes[kp + f"residual_convs.{c}.{j}.bias"] = (hidden,)
        for c in range(lvc_layers):
            shapes[p + f"conv_blocks.{c}.1.weight"] = (ch, ch, 3)
            shapes[p + f"conv_blocks.{c}.1.bias"] = (ch,)
    return shapes


def _sizes(network, config):
    """A network config -> the size arguments of its ``_*_shapes`` function (what main.cpp hard-codes as numbers)."""
    c = config
    if network == "autoregressive":
        return dict(layers=c["layers"], dim=c["model_dim"], text_rows=c["number_text_tokens"] + 1,
                    text_positions=c["max_text_tokens"] + 2, mel_rows=c.get("number_mel_codes", 8194),
                    mel_positions=c["max_mel_tokens"] + 2 + c["max_conditioning_inputs"])
    if network == "diffusion":
        return dict(ch=c["model_channels"], heads=c["num_heads"], layers=c["num_layers"],
                    in_channels=c["in_channels"], out_channels=c["out_channels"],
                    latent_channels=c["in_latent_channels"])
    return dict(noise=c.get("noise_dim", 64), ch=c.get("channel_size", 32))


def tortoise_cpp_shapes(network, config=None):
    """{name: torch-order shape} of every tensor tortoise.cpp's loader for ``network`` declares (its ggml ``ne`` is
    the reverse): with no ``config`` at the sizes main.cpp hard-codes (those of the released checkpoints), else at
    the sizes of ``config`` (what a tortoise.cpp rebuilt for that config would declare)."""
    make = {"autoregressive": _autoregressive_shapes, "diffusion": _diffusion_shapes,
            "vocoder": _vocoder_shapes}[network]
    return make() if config is None else make(**_sizes(network, config))


def check_tortoise_cpp(network, tensors):
    """Raise a one-line GgmlError unless ``tensors`` are exactly the names and shapes tortoise.cpp declares."""
    want = tortoise_cpp_shapes(network)
    for name, shape in want.items():
        if name not in tensors:
            raise GgmlError(f"{network}: tortoise.cpp needs tensor {name!r}, which this network lacks")
        if tuple(tensors[name].shape) != shape:
            raise GgmlError(f"{network}: {name} has shape {tuple(tensors[name].shape)} but tortoise.cpp hard-codes "
                            f"{shape} (the released size); it cannot load this checkpoint (--ggml_any_shape writes "
                            f"it anyway, for a tortoise.cpp rebuilt with these sizes)")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise GgmlError(f"{network}: tensor {extra[0]!r} is not one tortoise.cpp knows (its loader stops at unknown "
                        f"tensors)")


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
def tensor_record(name, array):
    """One tensor in GGML's legacy layout: n_dims, name length, ttype (f32), ne[] (innermost first), name, data."""
    name_bytes = name.encode()
    ne = _ne(array.shape)
    header = struct.pack(f"<3i{len(ne)}i", len(ne), len(name_bytes), GGML_TYPE_F32, *ne)
    return header + name_bytes + np.ascontiguousarray(array, dtype="<f4").tobytes()


def write_ggml(path, tensors):
    """Write ``{name: float32 array}`` as a tortoise.cpp model file (magic, no hparams, tensors) -> bytes written."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", GGML_FILE_MAGIC))
        for name, array in tensors.items():
            f.write(tensor_record(name, array))
        return f.tell()


def read_ggml(path):
    """-> {name: float32 array in torch order}: the file read back (a check that what was written parses)."""
    data = Path(path).read_bytes()
    if struct.unpack_from("<I", data, 0)[0] != GGML_FILE_MAGIC:
        raise GgmlError(f"{path} is not a GGML model file (bad magic)")
    pos, out = 4, {}
    while pos < len(data):
        n_dims, length, ttype = struct.unpack_from("<3i", data, pos)
        ne = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims
        name = data[pos:pos + length].decode()
        pos += length
        dtype = {GGML_TYPE_F32: "<f4", GGML_TYPE_F16: "<f2"}[ttype]
        count = int(np.prod(ne))
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=pos).reshape(_ne(ne)).astype(np.float32)
        pos += count * np.dtype(dtype).itemsize
    return out


def hparams(network, config):
    """The network's constructor configuration as flat GGUF metadata values (ints, floats, bools, strings)."""
    out = {}
    for key, value in sorted(config.items()):
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            out[key] = list(value)
    return out


def write_gguf(path, network, tensors, config):
    """Write the same tensors as GGUF (f32), with ``tortoise.network`` and ``tortoise.<network>.<key>`` metadata."""
    import gguf  # the `ggml` extra; imported here so the package works without it
    writer = gguf.GGUFWriter(str(path), GGUF_ARCH)
    writer.add_name(f"tortoise-{network}")
    writer.add_string(f"{GGUF_ARCH}.network", network)
    for key, value in hparams(network, config).items():
        field = f"{GGUF_ARCH}.{network}.{key}"
        if isinstance(value, bool):
            writer.add_bool(field, value)
        elif isinstance(value, int):
            writer.add_int64(field, value)
        elif isinstance(value, float):
            writer.add_float32(field, value)
        elif isinstance(value, str):
            writer.add_string(field, value)
        else:
            writer.add_array(field, value)
    for name, array in tensors.items():
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def voice_bytes(ar_latent):
    """A voice's autoregressive latent as tortoise.cpp's ``--voice`` file: its values as raw float32, no header."""
    return ggml_layout(ar_latent.reshape(-1)).astype("<f4").tobytes()


def write_voice(path, ar_latent, overwrite=False):
    """Write ``path`` (the voice .bin) atomically; an existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists: pass --overwrite to replace it or choose another output")
    return write_atomically(path, lambda tmp: Path(tmp).write_bytes(voice_bytes(ar_latent)))


def latent_digest(latent):
    """sha256 of a latent's float32 values (the diffusion file's fingerprint includes its voice)."""
    return hashlib.sha256(voice_bytes(latent)).hexdigest()
