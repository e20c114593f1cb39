"""tortoise-export: export Tortoise's networks to ONNX or OpenVINO IR, verified against torch.

    tortoise-export --models_dir DIR [--components all|NAME,...] [--format onnx|openvino] [--output_dir DIR]
                    [--opset_version N] [--fixed_shapes] [--half] [--skip_verification] [--cpu_only]
    tortoise-export --format ggml|gguf --voice NAME|FILE.pth [--components autoregressive,diffusion,vocoder]
                    [--ar_checkpoint FILE] [--diffusion_checkpoint FILE] [--vocoder_checkpoint FILE]

``--format ggml`` writes the three model files tortoise.cpp loads (``ggml-model.bin``, ``ggml-diffusion-model.bin``
with the ``--voice``'s diffusion latent, ``ggml-vocoder-model.bin``; `tortoise.export.ggml`), ``--format gguf`` the
same tensors as GGUF, into the same cache under the same fingerprint rules (`tortoise.export.tortoise_cpp`).

By default the graphs are the pipeline's own: dynamic axes, the default cache, the same keys, so a later
``--backend onnxruntime|openvino`` run with the same models finds them and exports nothing. ``--fixed_shapes`` makes
graphs of one shape for other tools (the pipeline does not use them). ``all`` skips, and names, the components whose
checkpoint is neither in the models directory nor downloadable (BigVGAN, or ``hifidecoder.pth`` offline).

Each component's graph is written into a temporary directory, verified (its runtime's outputs on seeded inputs
equal the torch network's within 1e-4 relative in fp32), and only then moved into the cache under a fingerprint of
the checkpoint, config and versions (`tortoise.export.cache`). A report table follows. Exit status: 0 when every
component passed (or was found in the cache), 1 when any failed (nothing of it is kept), 2 for bad arguments or a
missing runtime.
"""
import argparse
import sys
import time
import traceback

from tortoise.export import tortoise_cpp
from tortoise.export.components import COMPONENTS, NETWORK_COMPONENTS, Shapes
from tortoise.export.exporter import (DEFAULT_OPSET, ExportError, ExportOptions, VerificationError, export,
                                      network_source)
from tortoise.runtimes.common import MissingRuntime

GROUPS = {"autoregressive": NETWORK_COMPONENTS["autoregressive"], "ar": NETWORK_COMPONENTS["autoregressive"],
          "clvp": NETWORK_COMPONENTS["clvp"], "diffusion": NETWORK_COMPONENTS["diffusion"],
          "vocoders": ("univnet", "bigvgan_base", "bigvgan")}
# --format ggml|gguf: tortoise.cpp's three networks, by the names and groups that select them
FILE_NETWORKS = {"autoregressive": "autoregressive", "ar": "autoregressive", "diffusion": "diffusion",
                 "vocoder": "vocoder", "vocoders": "vocoder", "univnet": "vocoder"}
CHECKPOINT_FLAGS = {"autoregressive": "ar_checkpoint", "diffusion": "diffusion_checkpoint",
                    "vocoder": "vocoder_checkpoint"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="tortoise-export", description=__doc__.split("\n")[0])
    ap.add_argument("--models_dir", help="checkpoint directory (default: $TORTOISE_MODELS_DIR or "
                                         "~/.cache/tortoise/models)")
    ap.add_argument("--components", default="all",
                    help=f"comma-separated components or groups ({', '.join(GROUPS)}), or 'all'; components: "
                         f"{', '.join(COMPONENTS)}")
    ap.add_argument("--format", choices=("onnx", "openvino") + tortoise_cpp.FORMATS, default="onnx",
                    help="onnx / openvino graphs, or ggml (the files tortoise.cpp loads) / gguf (the same tensors)")
    ap.add_argument("--output_dir", help="cache directory (default: <models_dir>/exported, or $TORTOISE_EXPORT_DIR)")
    ap.add_argument("--opset_version", type=int, default=DEFAULT_OPSET)
    ap.add_argument("--fixed_shapes", action="store_true",
                    help="graphs that take only the --batch_size/--text_tokens/--codes/--clips shapes (the decode "
                         "step's cache length stays dynamic), for other tools; the pipeline uses the default, "
                         "dynamic axes")
    ap.add_argument("--dynamic_axes", action="store_true", help="the default (kept for older commands)")
    ap.add_argument("--half", action="store_true",
                    help="onnx: an fp16 graph (for GPU providers); openvino: fp16-compressed weights. Verified "
                         "within 1e-2")
    ap.add_argument("--skip_verification", action="store_true", help="keep graphs without comparing them to torch")
    ap.add_argument("--cpu_only", action="store_true", help="export and verify on the CPU even where CUDA is "
                                                            "available")
    ap.add_argument("--force", action="store_true", help="export again even if the cache has the graph")
    shapes = ap.add_argument_group("example shapes (verification inputs; the only shapes with --fixed_shapes)")
    defaults = Shapes()
    shapes.add_argument("--batch_size", type=int, default=defaults.batch)
    shapes.add_argument("--text_tokens", type=int, default=defaults.text_tokens)
    shapes.add_argument("--codes", type=int, default=defaults.codes,
                        help="AR codes (mel frames follow: codes * 4 * 24000 // 22050)")
    shapes.add_argument("--clips", type=int, default=defaults.clips, help="conditioning clips per voice")
    shapes.add_argument("--cond_frames", type=int, default=defaults.cond_frames,
                        help="conditioning mel frames (0: the pipeline's: 517 AR, 401 diffusion)")
    for network, flag in CHECKPOINT_FLAGS.items():
        ap.add_argument(f"--{flag}", help=f"the {network} checkpoint file (a fine-tune) instead of the models "
                                          "directory's")
    files = ap.add_argument_group("ggml / gguf (tortoise.cpp)")
    files.add_argument("--voice", help="the voice whose diffusion latent ggml-diffusion-model.bin carries: a .pth "
                                       "written by tortoise-get-conditioning-latents, or a voice holding one")
    files.add_argument("--voices_dir", help="directories of voices for --voice NAME (comma-separated)")
    files.add_argument("--ggml_any_shape", action="store_true",
                       help="write ggml files of other sizes than the released ones (tortoise.cpp hard-codes those "
                            "and refuses others: for a tortoise.cpp rebuilt with the sizes)")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks of failed exports")
    return ap.parse_args(argv)


def select_components(spec, models_dir, skipped=None):
    """'all' -> every component whose checkpoint is there (in the models directory, or downloadable); the others are
    appended to ``skipped`` as ``(component, reason)``. Else the named ones (a missing checkpoint then fails)."""
    if spec == "all":
        chosen, missing = [], {}
        for name, comp in COMPONENTS.items():
            if comp.network not in missing:
                try:
                    network_source(comp.network, models_dir)
                    missing[comp.network] = None
                except ExportError as e:
                    missing[comp.network] = " ".join(str(e).split())
            if missing[comp.network] is None:
                chosen.append(name)
            elif skipped is not None:
                skipped.append((name, missing[comp.network]))
        return chosen
    chosen = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        names = GROUPS.get(part, (part,))
        for name in names:
            if name not in COMPONENTS:
                raise ValueError(f"unknown component {name!r}; choose from {', '.join(COMPONENTS)} or groups "
                                 f"{', '.join(GROUPS)}")
            if name not in chosen:
                chosen.append(name)
    return chosen


def format_table(checks):
    """The verification report: one row per checked output."""
    header = ("component", "format", "case", "output", "shape", "max abs err", "max rel err", "tolerance", "result")
    rows = [header]
    for c in checks:
        rows.append((c.component, c.format, c.case, c.output, "x".join(map(str, c.shape)) or "-",
                     f"{c.max_abs:.2e}", f"{c.max_rel:.2e}", f"{c.tolerance:.0e}", "ok" if c.ok else "FAILED"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pipeline_note(args):
    """Whether the pipeline will use what was exported, and how it finds it."""
    if args.fixed_shapes:
        return "Fixed-shape graphs, for other tools: the pipeline exports and uses graphs with dynamic axes."
    if args.half and args.format == "openvino":
        return "fp16-compressed IR, for other tools: the pipeline's OpenVINO backend uses f32 IR (--half sets its " \
               "inference precision instead)."
    backend = "onnxruntime --ort_provider cuda --half" if args.half else (
        "onnxruntime" if args.format == "onnx" else "openvino")
    where = f" and TORTOISE_EXPORT_DIR={args.output_dir}" if args.output_dir else ""
    return f"The pipeline will use these graphs: --backend {backend} with the same models{where} finds them and " \
           "exports nothing."


def _checkpoint_flag(args, network):
    flag = CHECKPOINT_FLAGS.get(network)
    return getattr(args, flag) if flag else None


def select_networks(spec):
    """--components for ggml / gguf -> tortoise.cpp networks ('all': the three)."""
    if spec == "all":
        return list(tortoise_cpp.ggml.NETWORKS)
    chosen = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part not in FILE_NETWORKS:
            raise ValueError(f"{part!r} is not a tortoise.cpp model; choose from {', '.join(FILE_NETWORKS)} or all")
        if FILE_NETWORKS[part] not in chosen:
            chosen.append(FILE_NETWORKS[part])
    return chosen


def main_files(args):
    """--format ggml|gguf: write (or find in the cache) each network's file; a summary line per network."""
    try:
        networks = select_networks(args.components)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed, summary = [], []
    for network in networks:
        print(f"{network}: writing {args.format} ...", flush=True)
        try:
            r = tortoise_cpp.export_file(network, args.models_dir, args.format, output_dir=args.output_dir,
                                         checkpoint=getattr(args, CHECKPOINT_FLAGS[network]), voice=args.voice,
                                         voices_dir=args.voices_dir, force=args.force, any_shape=args.ggml_any_shape)
        except ExportError as e:
            if args.verbose:
                traceback.print_exc()
            failed.append(network)
            reason = str(e).removeprefix(network + ": ")
            summary.append(f"{network}: FAILED: {reason}")
            continue
        state = "in the cache" if r.cached else f"written, {r.verification}"
        summary.append(f"{network}: {state} ({r.seconds:.1f} s){'; ' + r.note if r.note else ''} -> {r.path}")
    print("\n".join(summary))
    if args.format == "ggml" and len(networks) > len(failed):
        print("\ntortoise.cpp reads ../models/<file> from its working directory: link or copy these files there "
              "(see docs/tortoise-cpp.md).")
    if failed:
        print(f"\n{len(failed)} of {len(networks)} models failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    args = parse_args(argv)
    if args.format in tortoise_cpp.FORMATS:
        return main_files(args)
    skipped = []
    try:
        components = select_components(args.components, args.models_dir, skipped)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = ExportOptions(opset=args.opset_version, dynamic=not args.fixed_shapes, half=args.half,
                            verify=not args.skip_verification, cpu_only=args.cpu_only,
                            shapes=Shapes(batch=args.batch_size, text_tokens=args.text_tokens, codes=args.codes,
                                          clips=args.clips, cond_frames=args.cond_frames))
    checks, failed, summary = [], [], []
    for name in components:
        start = time.perf_counter()
        print(f"{name}: exporting to {args.format} ...", flush=True)
        try:
            result = export(name, args.models_dir, args.format, output_dir=args.output_dir, options=options,
                            force=args.force, checkpoint=_checkpoint_flag(args, COMPONENTS[name].network))
        except MissingRuntime as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except VerificationError as e:
            checks += e.checks
            failed.append(name)
            summary.append(f"{name}: FAILED verification ({time.perf_counter() - start:.1f} s): {e}")
            continue
        except ExportError as e:
            if args.verbose:
                traceback.print_exc()
            failed.append(name)
            message = str(e)
            summary.append(f"{name}: FAILED: {message[len(name) + 2:] if message.startswith(name + ': ') else message}")
            continue
        checks += result.checks
        state = "in the cache" if result.cached else f"exported, verification {result.verification}"
        note = f"; {result.note}" if result.note else ""
        summary.append(f"{name}: {state} ({result.seconds:.1f} s){note} -> {result.path}")
    if checks:
        print()
        print(format_table(checks))
    print()
    print("\n".join(summary + [f"{name}: skipped: {why}" for name, why in skipped]))
    if len(components) > len(failed):
        print("\n" + pipeline_note(args))
    if failed:
        print(f"\n{len(failed)} of {len(components)} components failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
