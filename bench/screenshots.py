"""Screenshots of each tab for the README: docs/screenshots/{explore,runs,label,data,compare}.png.

Starts the real app with the embedded model on a fresh SQLite file and drives headless Chromium:
Explore after a best-of-8 run, Runs replaying it, Label with a pair made from it, Data with charts,
Compare with a quality-against-compute plot. The Data tab needs votes between samplers: the script
runs two more samplers on the same prompt and stores a few scripted votes from three made-up
annotators (they are demo data, not anyone's judgement). Each PNG is quantised to 256 colours so it
stays small enough to commit (about 100-250 KB at 1280 px wide).

    python -m bench.screenshots [--out docs/screenshots] [--tokens 32]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from bench.app_server import sample_and_save
from bench.browser import PROMPT, chromium, serve, set_number

ROOT = Path(__file__).resolve().parents[1]


def save_png(page, path: Path, max_height: int = 2200) -> int:
    """A full-page screenshot once nothing is pending, cropped to ``max_height`` and quantised; its size in bytes."""
    import io

    from PIL import Image

    page.wait_for_function("document.querySelectorAll('[data-testid=status-tracker]:not(.hide)').length === 0")
    page.wait_for_function("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))")
    image = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    image = image.crop((0, 0, image.width, min(image.height, max_height)))
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def wait_text(page, selector: str, text: str, timeout: float = 600_000) -> None:
    """Wait until ``selector`` shows ``text``; stop at once if it shows an error (⚠) instead."""
    page.wait_for_function(
        "([sel, text]) => { const t = document.querySelector(sel)?.innerText || ''; return t.includes(text) || t.includes('⚠'); }",
        arg=[selector, text], timeout=timeout, polling=500)  # not every frame: innerText forces a layout
    shown = page.locator(selector).inner_text()
    if text not in shown:
        raise RuntimeError(f"{selector} shows {shown.strip()!r}")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    wait_text(page, "[role=tab][aria-selected=true]", name)


def seed_votes(services, run_id: int, tokens: int) -> None:
    """Two more samplers on the same prompt (``samplescope sample --save``), then scripted votes
    between the three runs' picks."""
    from storage import add_vote, compare_runs, present

    ids = [run_id]
    for sampler, params in (("knockout", ["n=4"]), ("rejection", ["n=4", "batch_size=4"])):
        settings = [arg for value in [*params, f"max_new_tokens={tokens}"] for arg in ("--set", value)]
        ids.append(sample_and_save(services.db_url, ["--model", "embedded:smollm2", "--reward", "sentiment",
                                                     "--sampler", sampler, "--prompt", PROMPT, "--device", "cpu",
                                                     *settings]))
    comparisons = services.db.write(lambda s: compare_runs(s, ids))
    for who, choices in (("ann", "lll"), ("bob", "llr"), ("cat", "lrl")):
        for k, (cid, choice) in enumerate(zip(comparisons, choices, strict=False)):
            side = {"l": "left", "r": "right"}[choice]

            def vote(s, cid=cid, who=who, side=side, key=f"demo-{who}-{k}"):
                return add_vote(s, comparison_id=cid, annotator=who, outcome=present(s, cid).outcome(side),
                                idempotency_key=key)

            services.db.write(vote)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}

    with tempfile.TemporaryDirectory() as tmp, serve(f"sqlite:///{Path(tmp) / 'shots.db'}") as (url, services):
        with chromium() as page:
            page.goto(url)
            page.wait_for_selector("#explore-run")
            set_number(page, "explore-best_of_n-max_new_tokens", args.tokens)
            page.locator("#explore-prompt textarea").fill(PROMPT)
            page.locator("#explore-run").click()
            wait_text(page, "#explore-link", "Saved as run")
            run_id = int(re.search(r"Saved as run (\d+)", page.locator("#explore-link").inner_text()).group(1))
            sizes["explore"] = save_png(page, out / "explore.png")

            page.goto(f"{url}?run={run_id}")
            wait_text(page, "#runs-cost", "status: ok")
            sizes["runs"] = save_png(page, out / "runs.png")

            seed_votes(services, run_id, args.tokens)
            page.goto(url)
            open_tab(page, "Label")
            page.get_by_role("button", name=re.compile("^Make pairs from stored runs")).click()
            page.get_by_label("Run ids").fill(str(run_id))
            page.locator("#label-make").click()
            wait_text(page, "#label-made", "made 1 comparison", timeout=60_000)
            wait_text(page, "#label-progress", "0 done", timeout=60_000)
            sizes["label"] = save_png(page, out / "label.png")

            open_tab(page, "Data")
            page.locator("#export-dpo-jsonl").click()
            page.wait_for_selector("#data-file a[download]", timeout=60_000)
            page.locator("#data-refresh").click()
            page.wait_for_selector("#data-ranking .scatterlayer .point", timeout=60_000)
            page.wait_for_selector("#data-agreement .barlayer .point", timeout=60_000)
            sizes["data"] = save_png(page, out / "data.png")

            open_tab(page, "Compare")
            chosen = page.locator("#compare-set input").first  # the open-ended prompts suit a sentiment reward
            chosen.fill("open")
            page.get_by_role("option", name="open", exact=True).click()
            engines = page.locator("#compare-engines input").first  # a multiselect: type a spec, Enter adds it
            engines.fill("embedded:smollm2")
            engines.press("Enter")
            engines.press("Escape")
            page.locator("#compare-reward textarea, #compare-reward input[type=text]").first.fill("sentiment")
            page.get_by_label("majority", exact=True).uncheck()  # majority needs answers to vote on
            page.get_by_label("rejection", exact=True).check()
            page.locator("#compare-sizes textarea, #compare-sizes input[type=text]").first.fill("1,2,4,8")
            set_number(page, "compare-prompts", 4)
            set_number(page, "compare-tokens", 16)
            page.locator("#compare-run").click()
            wait_text(page, "#compare-status", "done:")
            sizes["compare"] = save_png(page, out / "compare.png")

    for name, size in sizes.items():
        print(f"{out / (name + '.png')}: {size / 1024:.0f} KB")
    return sizes


if __name__ == "__main__":
    main(sys.argv[1:])
