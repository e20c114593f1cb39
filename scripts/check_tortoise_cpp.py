"""Check the files ``tortoise-export --format ggml`` writes against the real reader, tortoise.cpp built from source.

    python scripts/check_tortoise_cpp.py --tortoise_cpp ~/src/tortoise.cpp --models_dir /path/to/full/models \\
        --voice results/conditioning_latents/NAME.pth [--work /tmp/tcpp-check] [--max_tokens 6] [--stage ar|vocoder]

Without a tortoise.cpp checkout (``--tortoise_cpp`` missing or not a directory) it says so and exits 0.

What it does, all under ``--work`` (the checkout itself is not touched):

1. exports the three model files from ``--models_dir`` with ``--voice``'s diffusion latent, and the voice ``.bin``;
2. copies the tortoise.cpp source (with its ``ggml`` submodule files), adds a small local dump to the copy (every
   decode step's logits, the text tokens and the sampled codes written to ``$TCPP_DUMP_DIR``; the stop token forced
   after ``$TCPP_MAX_TOKENS`` codes, since random weights rarely stop; ``$TCPP_STAGE=vocoder`` runs only the vocoder
   on tortoise.cpp's own test mel, ``assets/target_mel.bin``) and builds it with cmake (CPU);
3. runs it on the files (``--stage ar``: text -> codes -> diffusion -> vocoder, bounded by ``--timeout``);
4. reports which models it loaded (its ``*_model_load: model size`` lines) and compares its logits, step by step,
   with ours for the same voice latent, text tokens and codes (our UnifiedVoice, fp32, one full forward pass with
   tortoise.cpp's positions: text 0.., the start code at mel position 0, the k-th sampled code at k + 1).

Exit status 1 when a model failed to load or a logit differs by more than ``--tolerance``.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tortoise.export import ggml
from tortoise.export.tortoise_cpp import export_file
from tortoise.utils import checkpoints
from tortoise.utils.voices import load_latents

# The local dump: (anchor in main.cpp, text inserted after it). Applied to a copy, never committed anywhere.
DUMP_PATCH = (
    ("  ggml_tensor *next_token_logits = gf->nodes[gf->n_nodes - 1];\n",
     '  if (getenv("TCPP_DUMP_DIR")) {  // local verification dump\n'
     '    save_f32_tensor(next_token_logits, std::string(getenv("TCPP_DUMP_DIR")) + "/logits_" +\n'
     '                                       std::to_string(index) + ".f32");\n'
     '  }\n'),
    ("    samples = process_logits_and_sample(gf, mel_transformer_inputs_vector, i,\n"
     "                                        batch_size);\n",
     '    if (getenv("TCPP_DUMP_DIR")) {  // local verification dump\n'
     '      std::string dir(getenv("TCPP_DUMP_DIR"));\n'
     '      if (i == 0) { std::ofstream tf(dir + "/text_tokens.txt"); for (auto t : tokens) tf << t << "\\n"; }\n'
     '      std::ofstream cf(dir + "/codes.txt", std::ios::app);\n'
     '      for (int c = 0; c < batch_size; c++) cf << samples[c] << "\\n";\n'
     '    }\n'
     '    if (getenv("TCPP_MAX_TOKENS") && i + 1 >= atoi(getenv("TCPP_MAX_TOKENS"))) {\n'
     '      for (int c = 0; c < batch_size; c++) samples[c] = 8193;  // the stop token\n'
     '    }\n'),
    ("  gpt_vocab_init(\"../models/tokenizer.json\", vocab);\n",
     '  if (getenv("TCPP_STAGE") && std::string(getenv("TCPP_STAGE")) == "vocoder") {  // local check\n'
     '    std::vector<float> mel = load_f32_vector("../assets/target_mel.bin", 18700 * sizeof(float));\n'
     '    writeWav(outputPath.c_str(), vocoder(mel), 24000);\n'
     '    return 0;\n'
     '  }\n'),
)
LOADED = re.compile(r"^(\w+)_model_load: model size\s*=\s*([\d.]+) MB", re.M)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tortoise_cpp", help="a tortoise.cpp checkout (with its ggml submodule's files)")
    ap.add_argument("--models_dir", required=True, help="full-size checkpoints (released, fine-tuned or random)")
    ap.add_argument("--voice", required=True, help="a voice's latents .pth (tortoise-get-conditioning-latents)")
    ap.add_argument("--work", default="/tmp/tortoise-cpp-check")
    ap.add_argument("--message", default="this is a test.")
    ap.add_argument("--max_tokens", type=int, default=6, help="codes decoded before the stop token is forced")
    ap.add_argument("--stage", choices=("ar", "vocoder"), default="ar")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--tolerance", type=float, default=1e-2, help="max |logit difference| accepted")
    return ap.parse_args(argv)


def patched_build(source, work):
    """Copy tortoise.cpp, add the dump, build it (CPU, Release) -> path of the binary."""
    src = work / "src"
    if not (src / "main.cpp").is_file():
        shutil.copytree(source, src, ignore=shutil.ignore_patterns("build", ".git"))
        text = (src / "main.cpp").read_text()
        for anchor, added in DUMP_PATCH:
            if anchor not in text:
                raise SystemExit(f"this tortoise.cpp's main.cpp lacks the line the dump goes after: {anchor.strip()}")
            text = text.replace(anchor, anchor + added, 1)
        (src / "main.cpp").write_text(text)
    build = src / "build"
    build.mkdir(exist_ok=True)
    subprocess.run(["cmake", "..", "-DCMAKE_BUILD_TYPE=Release"], cwd=build, check=True, capture_output=True)
    subprocess.run(["cmake", "--build", ".", "--target", "tortoise", "-j", str(os.cpu_count() or 1)], cwd=build,
                   check=True, capture_output=True)
    return build / "tortoise"


def prepare_run(args, work):
    """Export the files and lay them out as tortoise.cpp looks for them (``../models`` of its working directory)."""
    run = work / "run"
    for sub in ("models", "build", "dump", "assets"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    for network in ggml.NETWORKS:
        result = export_file(network, args.models_dir, "ggml", output_dir=work / "exported", voice=args.voice)
        link = run / "models" / result.path.name
        link.unlink(missing_ok=True)
        link.symlink_to(result.path)
        print(f"{network}: {result.path}")
    shutil.copy(Path(args.tortoise_cpp) / "models" / "tokenizer.json", run / "models")
    for asset in (Path(args.tortoise_cpp) / "assets").glob("*.bin"):
        shutil.copy(asset, run / "assets")
    voice_bin = run / "models" / "voice.bin"
    ggml.write_voice(voice_bin, load_latents(args.voice)[0], overwrite=True)
    for f in (run / "dump").iterdir():
        f.unlink()
    return run, voice_bin


def our_logits(models_dir, cond, text, codes):
    """UnifiedVoice's logits for tortoise.cpp's prompt and codes: (steps, 8194), one per decode step."""
    net = checkpoints.load_model("autoregressive", models_dir=models_dir).eval()
    with torch.no_grad():
        t = torch.tensor([text])
        prompt = net.text_embedding(t) + net.text_pos_embedding.emb.weight[:len(text)].unsqueeze(0)
        mel = torch.tensor([[net.start_mel_token] + codes[:-1]])
        positions = [0] + [k + 2 for k in range(len(codes) - 1)]  # tortoise.cpp's (and the original kv_cache's)
        mel_emb = net.mel_embedding(mel) + net.mel_pos_embedding.emb.weight[positions].unsqueeze(0)
        x = torch.cat([cond.reshape(1, 1, -1), prompt, mel_emb], dim=1)
        hidden = net.gpt(inputs_embeds=x, return_dict=True).last_hidden_state[0, -mel.shape[1]:]
        return net._final(hidden)[1].numpy()


def compare(args, run, voice_bin):
    dump = run / "dump"
    text = [int(x) for x in (dump / "text_tokens.txt").read_text().split()]
    codes = [int(x) for x in (dump / "codes.txt").read_text().split()]
    cond = torch.from_numpy(np.fromfile(voice_bin, dtype="<f4"))
    ours = our_logits(args.models_dir, cond, text, codes)
    print(f"text tokens (tortoise.cpp's tokenizer): {text}\ncodes it sampled: {codes}")
    worst = 0.0
    for k in range(len(codes)):
        theirs = np.fromfile(dump / f"logits_{k}.f32", dtype="<f4")
        diff = float(np.abs(theirs - ours[k]).max())
        worst = max(worst, diff)
        print(f"step {k}: max |logit diff| {diff:.3e} (max |logit| {np.abs(ours[k]).max():.3f}); argmax "
              f"ours {ours[k].argmax()} tortoise.cpp {theirs.argmax()}")
    return worst


def main(argv=None):
    args = parse_args(argv)
    if not args.tortoise_cpp or not (Path(args.tortoise_cpp) / "main.cpp").is_file():
        print("skipped: no tortoise.cpp checkout given (--tortoise_cpp DIR, with its ggml submodule)")
        return 0
    work = Path(args.work)
    binary = patched_build(Path(args.tortoise_cpp).resolve(), work)
    run, voice_bin = prepare_run(args, work)
    env = dict(os.environ, TCPP_DUMP_DIR=str(run / "dump"), TCPP_MAX_TOKENS=str(args.max_tokens),
               TCPP_STAGE=args.stage)
    cmd = [str(binary), "--message", args.message, "--voice", str(voice_bin), "--seed", "0",
           "--output", str(run / f"{args.stage}.wav")]
    try:
        proc = subprocess.run(cmd, cwd=run / "build", env=env, capture_output=True, text=True, timeout=args.timeout)
        log, status = proc.stdout + proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        log, status = (e.stdout or b"").decode() + (e.stderr or b"").decode(), f"stopped after {args.timeout:.0f} s"
    loaded = {m.group(1): float(m.group(2)) for m in LOADED.finditer(log)}
    print(f"tortoise.cpp ({status}) loaded: " + ", ".join(f"{k} ({v} MB)" for k, v in loaded.items()))
    failed = "failed to load" in log or "wrong shape" in log or "unknown tensor" in log
    wav = run / f"{args.stage}.wav"
    if wav.is_file():
        print(f"it wrote {wav} ({wav.stat().st_size} bytes)")
    if args.stage == "ar" and (run / "dump" / "codes.txt").is_file():
        worst = compare(args, run, voice_bin)
        failed |= worst > args.tolerance
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
