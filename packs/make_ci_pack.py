"""Write the committed CI pack: SmolLM2's directly trained refusal adapter as a pack for SmolLM2 Q4_1.

    python packs/make_ci_pack.py   # → packs/smollm2-135m-instruct-refusal-direct.pack.gguf

The adapter (``adapters/smollm2-135m-instruct/refusal``) was trained on SmolLM2-135M-Instruct (fp32,
dequantized from the zoo GGUF); the pack applies it unchanged (identity translators) to the Q4_1 file.
``tests/test_ci_behavior.py`` checks that it moves SmolLM2's refusal rate by a clear margin.
"""

from __future__ import annotations

from pathlib import Path

from commandv.exporter.adapters.folder import load_adapter
from commandv.exporter.adapters.self_pack import adapter_pack
from commandv.runtime.models import zoo
from commandv.runtime.models.fingerprint import model_info_from_gguf

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "packs" / "smollm2-135m-instruct-refusal-direct.pack.gguf"


def main() -> None:
    info = model_info_from_gguf(zoo.fetch("smollm2-135m-instruct"))
    ad = load_adapter(REPO / "adapters" / "smollm2-135m-instruct" / "refusal")
    pack = adapter_pack(ad, info.fingerprint, info.arch, info.n_layer, "refusal-smollm2-direct")
    print(f"wrote {pack.save(OUT)} ({OUT.stat().st_size} bytes, {len(pack.entries)} entries)")


if __name__ == "__main__":
    main()
