"""The networks of one pipeline: loaded on first use, placed on the device, in the precision decided once.

Precision is decided here and nowhere else. ``dtype`` None means float32; a half dtype (the device layer's choice
for ``--half``: float16 on CUDA / MPS / Arc A-series, bfloat16 on Arc B-series and on CPUs with native bf16) casts
the weights of the networks that tolerate it (:data:`HALF_NETWORKS`) once, when they are loaded. From then on the
dtype follows the tensors: no autocast anywhere. Inside those networks the numerically delicate parts stay float32
(the AR model's final norm and heads, the diffusion model's GroupNorms); every stage hands float32 tensors to the
next. The vocoders, the random-voice generators and the classifier always run in float32.

Low-VRAM mode keeps every network on the CPU and moves one onto the device for its stage (:meth:`ModelSet.stage`).
"""
from contextlib import contextmanager

import torch

import xpu
from tortoise.models.vocoder import load_vocoder
from tortoise.options import ModelOptions
from tortoise.utils import checkpoints

HALF_NETWORKS = ("autoregressive", "clvp", "cvvp", "diffusion")
# Networks a graph backend (ONNX Runtime, OpenVINO) runs; CVVP, the random-voice generators and the classifier stay
# in torch (small, or used rarely).
GRAPH_NETWORKS = ("autoregressive", "clvp", "diffusion", "vocoder", "hifidecoder")
NETWORKS = ("autoregressive", "clvp", "cvvp", "diffusion", "vocoder", "rlg_auto", "rlg_diffuser", "hifidecoder",
            "classifier")


class ModelSet:
    """Loads and holds the networks; ``get(name)`` returns one (loading it the first time).

    :param device: where the networks compute (resolved).
    :param options: the :class:`tortoise.options.ModelOptions` of what to load: the models dir, explicit checkpoint
                    files, the vocoder, the hub revision and the AR decoding settings.
    :param dtype: None (float32) or the half dtype for :data:`HALF_NETWORKS` (resolved for ``device``).
    :param high_vram: True keeps every network on ``device``; False keeps them on the CPU between stages.
    :param check_ar: called with the autoregressive model once loaded (e.g. the tokenizer check), before it is kept.
    :param backend, backend_options: the resolved backend and its runtime options (:mod:`tortoise.placement`).
    """

    def __init__(self, device, options=ModelOptions(), dtype=None, high_vram=True, check_ar=None, backend="torch",
                 backend_options=None):
        self.device = torch.device(device)
        self.options = options
        self.models_dir = str(options.models_dir or checkpoints.default_models_dir())
        self.dtype = dtype
        self.high_vram = high_vram
        self.paths = options.checkpoints
        self.vocoder_name = options.vocoder
        self.ar_settings = options.ar_settings()
        self.revision = options.hub_revision
        self.check_ar = check_ar
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self._models = {}

    @property
    def home(self):
        """Where networks live between stages."""
        return self.device if self.high_vram else torch.device("cpu")

    def loaded(self, name):
        return name in self._models

    def name_of(self, model):
        """The name under which ``model`` was loaded."""
        return next(n for n, m in self._models.items() if m is model)

    def get(self, name):
        """Network ``name``, loaded the first time (in eval mode, on :attr:`home`, in its precision)."""
        if name not in self._models:
            with torch.random.fork_rng(devices=[]):  # building a network draws init weights: keep seeds intact
                model = self._load(name)
            self._models[name] = model
        return self._models[name]

    def _load(self, name):
        if self.backend != "torch" and name in GRAPH_NETWORKS:
            return self._load_graphs(name)
        if name == "vocoder" and self.vocoder_name != "univnet":
            path = checkpoints.bigvgan_dir(self.vocoder_name, self.models_dir)
            return load_vocoder(self.vocoder_name, path, device=self.home)
        model = checkpoints.load_model(name, models_dir=self.models_dir, path=self.paths.get(name),
                                       device=self.home, revision=self.revision)
        half = self.dtype if name in HALF_NETWORKS else None
        if name == "autoregressive":
            if self.check_ar is not None:
                self.check_ar(model)
            model.post_init_gpt2_config(half=half or False, **self.ar_settings)
        elif half is not None:
            model.to(half)
        if self.device.type == "xpu":  # the Intel Extension, when a version-matched one is installed
            model = xpu.optimize(model, dtype=half)
        return model

    def _load_graphs(self, name):
        """The network as exported graphs on ONNX Runtime or OpenVINO (:mod:`tortoise.backends`): exported, verified
        and cached under a fingerprint of checkpoint, config and versions the first time; same calls as the torch
        network. The half dtype does not apply (a runtime has its own precision setting)."""
        from tortoise import backends
        network = self.vocoder_name if name == "vocoder" and self.vocoder_name != "univnet" else name
        checkpoint = self.paths.get(name)
        if network in ("bigvgan_base", "bigvgan"):
            checkpoint = checkpoints.bigvgan_dir(network, self.models_dir)
        model = backends.load(network, self.models_dir, self.backend, checkpoint=checkpoint, **self.backend_options)
        if name == "autoregressive":
            if self.check_ar is not None:
                self.check_ar(model)
            model.post_init_gpt2_config(**{k: v for k, v in self.ar_settings.items()
                                           if k in ("kv_cache", "position_mode")})
        return model

    def acquire(self, *names):
        """The named networks on the device (moved there in low-VRAM mode), in order; pair with :meth:`release`."""
        models = [self.get(n) for n in names]
        if not self.high_vram:
            for m in models:
                m.to(self.device)
        return models

    def release(self, *names):
        """After a stage: graph networks give back their runtimes' working memory; in low-VRAM mode the named
        networks go back to the CPU, and the device's cache is emptied."""
        for n in names:
            give_back = getattr(self._models[n], "release_memory", None)
            if give_back is not None:
                give_back()
        if self.high_vram:
            return
        for n in names:
            self._models[n].to("cpu")
        xpu.empty_cache(self.device)

    @contextmanager
    def stage(self, *names):
        """The named networks on the device for one stage (see :meth:`acquire`). Yields them in order (one network:
        the network itself)."""
        models = self.acquire(*names)
        try:
            yield models[0] if len(models) == 1 else models
        finally:
            self.release(*names)
