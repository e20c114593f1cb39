"""The diffusion process of Tortoise's mel decoder and its samplers: ``p`` (ancestral), ``ddim`` and ``dpm++2m``.

The process is the one the released `DiffusionTts` was trained with (Nichol & Dhariwal 2021, "Improved DDPM"):
4000 steps of linear betas, epsilon prediction, learned-range variance (the model's second half of channels
interpolates the log variance between the posterior's and beta's), respaced to the requested number of steps
(`space_timesteps`, `SpacedDiffusion`), predicted x0 clamped to [-1, 1] (mels are normalised to that range).

Classifier-free guidance, as the original: ``eps = (1 + k') eps_cond - k' eps_uncond`` on the noise half only (the
variance half comes from the conditional pass), with ``k' = k (1 - i / N)`` ramping up as the respaced step ``i``
goes from ``N - 1`` down to 0. Both passes run as one batched forward (`DiffusionTts.forward_guided`).

Public names follow the original module (`get_named_beta_schedule`, `space_timesteps`, `SpacedDiffusion`,
`p_sample_loop`, `ddim_sample_loop`) and the fast fork (`sampler=`, `sample_loop`, `SAMPLERS`); the code is ours.
Everything here is inference only.
"""
import math

import numpy as np
import torch
from tqdm.auto import tqdm

TRAINED_DIFFUSION_STEPS = 4000
SAMPLERS = ("p", "ddim", "dpm++2m")


def get_named_beta_schedule(schedule_name, num_diffusion_timesteps):
    """Betas (float64 numpy, length ``num_diffusion_timesteps``): ``"linear"`` (Ho et al. 2020, scaled so that any
    step count keeps the 1000-step endpoints' products) or ``"cosine"`` (Nichol & Dhariwal 2021, eq. 17)."""
    n = num_diffusion_timesteps
    if schedule_name == "linear":
        scale = 1000 / n
        return np.linspace(scale * 0.0001, scale * 0.02, n, dtype=np.float64)
    if schedule_name == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
    raise ValueError(f"unknown beta schedule {schedule_name!r}: use 'linear' or 'cosine'")


def space_timesteps(num_timesteps, section_counts):
    """The set of original timesteps kept when ``num_timesteps`` are respaced.

    ``section_counts``: a list (or comma-separated string) of step counts, one per equal section of the process,
    each section strided evenly with rounding; or ``"ddimN"`` for the DDIM paper's integer stride giving N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == want:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot take exactly {want} of {num_timesteps} steps with an integer stride")
        section_counts = [int(c) for c in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    steps, start = [], 0
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}; ask for at most {size}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):  # accumulated, not stride * j: the rounding of the original's sums decides ties
            steps.append(start + round(pos))
            pos += stride
        start += size
    return set(steps)


class GaussianDiffusion:
    """The original's Gaussian diffusion for sampling (epsilon prediction; learned-range, learned or fixed variance).

    Keyword arguments are the original's; ``loss_type`` is accepted and ignored (no training here), ``sampler``
    (fast fork) picks what `sample_loop` runs.
    """

    def __init__(self, *, betas, model_mean_type="epsilon", model_var_type="learned_range", loss_type="mse",
                 rescale_timesteps=False, conditioning_free=False, conditioning_free_k=1,
                 ramp_conditioning_free=True, sampler="p"):
        if str(getattr(model_mean_type, "value", model_mean_type)) != "epsilon":
            raise ValueError(f"model_mean_type {model_mean_type!r} is not supported: Tortoise predicts 'epsilon'")
        var_type = str(getattr(model_var_type, "value", model_var_type))
        if var_type not in ("learned_range", "learned", "fixed_small", "fixed_large"):
            raise ValueError(f"unknown model_var_type {model_var_type!r}: use 'learned_range' (Tortoise)")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
        self.model_var_type = var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        self.conditioning_free = conditioning_free
        self.conditioning_free_k = conditioning_free_k
        self.ramp_conditioning_free = ramp_conditioning_free
        self.sampler = sampler
        self._set_schedule(np.asarray(betas, dtype=np.float64))

    def _set_schedule(self, betas):
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array of values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        ac = np.cumprod(1.0 - betas)  # alphas_cumprod
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = ac, ac_prev
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.posterior_variance = post_var
        # the posterior variance is 0 at the first step: its log is clipped to the next step's (a one-step process,
        # which adds no noise at its only step, takes beta's)
        first = post_var[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, post_var[1:]))
        coefs = {  # float64 maths, float32 tables (as the original extracts them)
            "sqrt_recip_ac": np.sqrt(1.0 / ac), "sqrt_recipm1_ac": np.sqrt(1.0 / ac - 1),
            "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
            "min_log": self.posterior_log_variance_clipped, "max_log": np.log(betas),
            "ac": ac, "ac_prev": ac_prev,
        }
        fixed_large = np.append(first, betas[1:])
        coefs["fixed_log"] = {"fixed_small": self.posterior_log_variance_clipped,
                              "fixed_large": np.log(fixed_large)}.get(self.model_var_type, coefs["min_log"])
        self._c = {k: torch.from_numpy(v.astype(np.float32)) for k, v in coefs.items()}

    def _coef(self, name, i, like):
        """Scalar coefficient ``name`` at respaced step ``i`` as a 0-d tensor on ``like``'s device."""
        return self._c[name][i].to(like.device)

    # ---- the model, with guidance, as an (eps, variance values) function of (x, i) ----

    def _model_timesteps(self, i, n, device):
        t = torch.full((n,), i, device=device, dtype=torch.long)
        return t.float() * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def _ramp_position(self, i):
        return i * 1000.0 / self.num_timesteps if self.rescale_timesteps else i

    def guidance_scale(self, i):
        """The guidance weight k' at step ``i`` (0 without conditioning-free guidance; ramped as the original)."""
        if not self.conditioning_free:
            return 0.0
        if self.ramp_conditioning_free:
            return self.conditioning_free_k * (1 - self._ramp_position(i) / self.num_timesteps)
        return self.conditioning_free_k

    def model_eps(self, model, x, i, model_kwargs=None):
        """Guided noise prediction and the conditional variance values, each like ``x``, at respaced step ``i``."""
        ts = self._model_timesteps(i, x.shape[0], x.device)
        return self.guided_output(model, x, ts, self.guidance_scale(i), model_kwargs)

    def guided_output(self, model, x, ts, k, model_kwargs=None):
        """(eps, variance values) of ``model`` at model timesteps ``ts``: ``(1 + k) eps_c - k eps_u`` when guided."""
        model_kwargs = model_kwargs or {}
        c = x.shape[1]
        if self.conditioning_free:
            if hasattr(model, "forward_guided"):
                out, out_uncond = model.forward_guided(x, ts, **model_kwargs)  # one batched forward
            else:
                out = model(x, ts, **model_kwargs)
                out_uncond = model(x, ts, conditioning_free=True, **model_kwargs)
        else:
            out = model(x, ts, **model_kwargs)
        if out.shape[1] != 2 * c:
            raise ValueError(f"the model returned {out.shape[1]} channels for {c}-channel input; "
                             f"epsilon + learned variance needs {2 * c}")
        eps, var_values = out[:, :c], out[:, c:]
        if self.conditioning_free:
            eps = (1 + k) * eps - k * out_uncond[:, :c]
        return eps, var_values

    def log_variance(self, i, var_values):
        """Log variance of p(x_{i-1} | x_i): the learned interpolation (learned_range), learned, or fixed."""
        if self.model_var_type == "learned_range":
            frac = (var_values + 1) / 2
            return frac * self._coef("max_log", i, var_values) + (1 - frac) * self._coef("min_log", i, var_values)
        if self.model_var_type == "learned":
            return var_values
        return self._coef("fixed_log", i, var_values).expand_as(var_values)

    def predict_xstart(self, x, i, eps, clip_denoised=True, denoised_fn=None):
        x0 = self._coef("sqrt_recip_ac", i, x) * x - self._coef("sqrt_recipm1_ac", i, x) * eps
        if denoised_fn is not None:
            x0 = denoised_fn(x0)
        return x0.clamp(-1, 1) if clip_denoised else x0

    @torch.no_grad()
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """The original's dict (mean, variance, log_variance, pred_xstart) at respaced step ``t`` (int or tensor)."""
        i = _step_index(t)
        eps, var_values = self.model_eps(model, x, i, model_kwargs)
        x0 = self.predict_xstart(x, i, eps, clip_denoised, denoised_fn)
        mean = self._coef("coef1", i, x) * x0 + self._coef("coef2", i, x) * x
        log_var = self.log_variance(i, var_values)
        return {"mean": mean, "variance": log_var.exp(), "log_variance": log_var, "pred_xstart": x0}

    # ---- sampling loops ----

    def _start(self, model, shape, noise, device):
        if noise is not None:
            return noise
        if device is None:
            device = next(model.parameters()).device
        return torch.randn(*shape, device=device)

    def _steps(self, progress):
        return _progress_steps(range(self.num_timesteps - 1, -1, -1), progress, "diffusion")

    @staticmethod
    def _reject_cond_fn(cond_fn):
        if cond_fn is not None:
            raise ValueError("cond_fn (classifier guidance) is not supported; use conditioning_free guidance")

    @torch.no_grad()
    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False):
        """Ancestral sampling (the original's default): x_{i-1} ~ N(mean, exp(log_var)), noise drawn each step with
        ``torch.randn_like`` after the model call, exactly as the original consumes the RNG."""
        self._reject_cond_fn(cond_fn)
        x = self._start(model, shape, noise, device)
        for i in self._steps(progress):
            out = self.p_mean_variance(model, x, i, clip_denoised, denoised_fn, model_kwargs)
            z = torch.randn_like(x)
            x = out["mean"] + (torch.exp(0.5 * out["log_variance"]) * z if i > 0 else 0)
        return x

    @torch.no_grad()
    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0):
        """DDIM (Song et al. 2021, eq. 12); ``eta=0`` (the default) is deterministic. Draws one ``randn_like`` per step,
        as the original, so the RNG state after the loop matches it."""
        self._reject_cond_fn(cond_fn)
        x = self._start(model, shape, noise, device)
        for i in self._steps(progress):
            eps, _ = self.model_eps(model, x, i, model_kwargs)
            x0 = self.predict_xstart(x, i, eps, clip_denoised, denoised_fn)
            eps = (self._coef("sqrt_recip_ac", i, x) * x - x0) / self._coef("sqrt_recipm1_ac", i, x)
            ab, ab_prev = self._coef("ac", i, x), self._coef("ac_prev", i, x)
            sigma = eta * torch.sqrt((1 - ab_prev) / (1 - ab)) * torch.sqrt(1 - ab / ab_prev)
            z = torch.randn_like(x)
            x = x0 * torch.sqrt(ab_prev) + torch.sqrt(1 - ab_prev - sigma ** 2) * eps
            if i > 0 and eta > 0:
                x = x + sigma * z
        return x

    @torch.no_grad()
    def dpmpp_2m_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                             model_kwargs=None, device=None, progress=False):
        """DPM-Solver++(2M) (`sample_dpmpp_2m`) with as many model calls as this process has steps, on trained
        timesteps spaced uniformly in log-SNR (`lambda_uniform_timesteps`); guidance ramps with the trained timestep
        (``k (1 - t / T)``, the continuous form of the original's ramp)."""
        self._reject_cond_fn(cond_fn)
        x = self._start(model, shape, noise, device)
        base_ac = self.base_alphas_cumprod
        steps = lambda_uniform_timesteps(base_ac, self.num_timesteps)  # trained timesteps, descending
        ac = torch.from_numpy(base_ac[steps].copy())  # float64
        sqrt_recip, sqrt_recipm1 = (1 / ac).sqrt().tolist(), (1 / ac - 1).sqrt().tolist()
        big_t = len(base_ac)

        def denoise(x_, k):
            t = int(steps[k])
            ts = torch.full((x_.shape[0],), t, device=x_.device, dtype=torch.long)
            if self.rescale_timesteps:
                ts = ts.float() * (1000.0 / big_t)
            scale = self.conditioning_free_k * ((1 - t / big_t) if self.ramp_conditioning_free else 1)
            eps, _ = self.guided_output(model, x_, ts, scale, model_kwargs)
            x0 = sqrt_recip[k] * x_ - sqrt_recipm1[k] * eps
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        return sample_dpmpp_2m(denoise, x, ac.sqrt(), (1 - ac).sqrt(), progress=progress)

    @property
    def base_alphas_cumprod(self):
        """alphas_cumprod of the trained (un-respaced) process."""
        return self.alphas_cumprod

    def sample_loop(self, model, shape, **kwargs):
        """Run the sampler chosen at construction (``p``, ``ddim`` or ``dpm++2m``)."""
        loops = {"p": self.p_sample_loop, "ddim": self.ddim_sample_loop, "dpm++2m": self.dpmpp_2m_sample_loop}
        return loops[self.sampler](model, shape, **kwargs)


class SpacedDiffusion(GaussianDiffusion):
    """A `GaussianDiffusion` that keeps only ``use_timesteps`` of the base process (betas recomputed so that the kept
    steps have the base's alphas_cumprod); the model still sees the base process's timestep numbers."""

    def __init__(self, use_timesteps, **kwargs):
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(base_betas)
        self.timestep_map = sorted(t for t in self.use_timesteps if 0 <= t < len(base_betas))
        if len(self.timestep_map) != len(self.use_timesteps):
            raise ValueError(f"use_timesteps must lie in 0..{len(base_betas) - 1}")
        ac = np.cumprod(1.0 - base_betas)[self.timestep_map]
        kwargs["betas"] = 1 - ac / np.append(1.0, ac[:-1])
        super().__init__(**kwargs)
        self._map = torch.tensor(self.timestep_map, dtype=torch.long)
        self._base_ac = np.cumprod(1.0 - base_betas)

    @property
    def base_alphas_cumprod(self):
        return self._base_ac

    def _model_timesteps(self, i, n, device):
        t = self._map[i].to(device).expand(n)
        return t.float() * (1000.0 / self.original_num_steps) if self.rescale_timesteps else t

    def _ramp_position(self, i):
        return i  # the original's SpacedDiffusion ramps on the respaced step index


def lambda_uniform_timesteps(alphas_cumprod, n):
    """``n`` trained timesteps, descending from the noisiest to 0, nearest to a uniform grid in log-SNR.

    lambda = log(alpha / sigma) runs from about -5.0 (t = 3999) to 5.3 (t = 0) on Tortoise's schedule. A grid uniform
    in t (the respacing ``p``/``ddim`` use) puts a third of that range in the last step (t = 210 -> 0 at 20 steps),
    where a second-order extrapolation of x0 overshoots; uniform lambda keeps the steps equal, which is what the
    multistep solver assumes (Lu et al. 2022, section 3.3). Near t = 0 one trained step spans up to 0.36 in lambda:
    where two grid points would share a timestep, the noisier one moves up to the next free timestep.
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    if not 1 <= n <= len(ac):
        raise ValueError(f"dpm++2m steps must be in 1..{len(ac)}, got {n}")
    lam = 0.5 * (np.log(ac) - np.log1p(-ac))  # decreasing in t
    targets = np.linspace(lam[-1], lam[0], n) if n > 1 else lam[-1:]
    steps = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)  # descending, possibly with repeats
    for j in range(n - 2, -1, -1):  # from the clean end: keep strictly descending
        steps[j] = max(steps[j], steps[j + 1] + 1)
    return steps.astype(np.int64)


def sample_dpmpp_2m(denoise, x, alphas, sigmas, progress=False):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): multistep second order in data prediction.

    ``denoise(x, k)`` returns the x0 estimate at the k-th point of the schedule; ``alphas``/``sigmas`` (1-D, noisiest
    first) give x_k = alpha_k x0 + sigma_k eps. The solver steps in lambda = log(alpha / sigma) with
    ``x <- (sigma'/sigma) x - alpha' expm1(-h) D``, D the x0 estimate extrapolated from the previous one
    (``D = (1 + 1/2r) x0_k - (1/2r) x0_{k-1}``, r = h_prev / h); the first step is first order, and the last call
    returns the x0 estimate at the cleanest point (the step to sigma = 0, as k-diffusion's ``sample_dpmpp_2m``).
    Its first-order form is DDIM (eta 0) on the same points.

    Why Tortoise runs it on discrete trained timesteps (`GaussianDiffusion.dpmpp_2m_sample_loop`): the model was
    trained on the 4000 discrete steps and fed their integer index; solving between trained (timestep, alpha_bar)
    pairs gives the model exactly the inputs it learned and starts at the same noise level as ``p``/``ddim``
    (alpha_bar ~ 4e-5). The fast fork instead solves a continuous VP schedule (beta 0.025..5 over t in [0, 1], the
    model fed t x 1000), which neither starts at the trained noise level nor pairs the model's timestep input with
    the alpha_bar it was trained at.
    """
    lam = (alphas.log() - sigmas.log()).tolist()  # increasing
    al, sg = alphas.tolist(), sigmas.tolist()
    n = len(lam)
    x0_prev, h_prev = None, None
    for k in _progress_steps(range(n), progress, "dpm++2m"):
        x0 = denoise(x, k)
        if k == n - 1:
            return x0
        h = lam[k + 1] - lam[k]
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = (sg[k + 1] / sg[k]) * x - (al[k + 1] * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    return x


def _progress_steps(steps, progress, desc):
    """Iterate ``steps``, reporting progress: ``progress`` True draws a tqdm bar (the original's ``progress=True``), a
    callable is called as ``progress(done, total)`` after each step, False reports nothing."""
    if callable(progress):
        return _reporting(steps, progress)
    return tqdm(steps, disable=not progress, desc=desc)


def _reporting(steps, callback):
    total = len(steps)
    for done, step in enumerate(steps, 1):
        yield step
        callback(done, total)  # runs once the loop body of this step has finished


def _step_index(t):
    if isinstance(t, torch.Tensor):
        if t.numel() > 1 and not bool((t == t.reshape(-1)[0]).all()):
            raise ValueError("all items of a batch must be at the same diffusion step")
        return int(t.reshape(-1)[0])
    return int(t)


def make_diffuser(steps, sampler="p", cond_free=True, cond_free_k=2.0, trained_steps=TRAINED_DIFFUSION_STEPS):
    """The original's process (linear betas, epsilon, learned range) respaced to ``steps``, sampled with ``sampler``."""
    if not 1 <= steps <= trained_steps:
        raise ValueError(f"diffusion steps must be in 1..{trained_steps}, got {steps}")
    if sampler == "dpm++2m" and not cond_free:
        raise ValueError("the dpm++2m sampler needs cond_free=True (as in the fast fork)")
    return SpacedDiffusion(use_timesteps=space_timesteps(trained_steps, [steps]), model_mean_type="epsilon",
                           model_var_type="learned_range", loss_type="mse",
                           betas=get_named_beta_schedule("linear", trained_steps),
                           conditioning_free=cond_free, conditioning_free_k=cond_free_k, sampler=sampler)


def output_length(num_codes):
    """Mel frames at 24 kHz for ``num_codes`` AR codes (each code is 4 frames of a 22.05 kHz mel)."""
    return num_codes * 4 * 24000 // 22050


def do_spectrogram_diffusion(diffusion_model, diffuser, latents, conditioning_latents, temperature=1, verbose=True):
    """The original's helper: AR latents -> denormalised 24 kHz mel (B, 100, T) with ``diffuser``'s sampler."""
    from tortoise.utils.sound import denormalize_tacotron_mel
    with torch.no_grad():
        t = output_length(latents.shape[1])
        shape = (latents.shape[0], 100, t)
        emb = diffusion_model.timestep_independent(latents, conditioning_latents, t, False)
        noise = torch.randn(shape, device=latents.device) * temperature
        mel = diffuser.sample_loop(diffusion_model, shape, noise=noise, progress=verbose,
                                   model_kwargs={"precomputed_aligned_embeddings": emb})
        return denormalize_tacotron_mel(mel)[:, :, :t]
