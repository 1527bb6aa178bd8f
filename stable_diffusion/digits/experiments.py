"""The paper's four applications on the digits model, measured, with Tables 2 and 3 beside
the paper's: ``python -m stable_diffusion.digits results``.

Every application optimises through ``adjointdpm.sample(..., gradient=...)`` with the
applications' own functions (:mod:`stable_diffusion.apps`); this module chooses the sizes,
adds the measurements that need the digit classifier (recognition rates, digit-FID) and
writes ``results/stable_diffusion/digits/``:

1. vocabulary expansion (Table 2): guide "a handwritten digit nine", a digit the model never
   saw, toward the classifier's nine by optimising ``x_T``;
2. audit (Table 3): for each digit zero to eight, the share of correctly drawn samples whose
   decision an ``||delta||_inf <= tau`` change of ``x_T`` flips, at the paper's tau = 0.8 and
   over tau;
3. stylization: cross-attention weights fine-tuned toward the Gram-matrix style of a real
   photograph bundled with scikit-learn, measured on noise-prompt pairs it never trained on;
4. inversion: a new token learned from 16 real nines, then used in the training template and
   in another one.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from adjointdpm import files
from adjointdpm.frechet import distance_between

from .. import apps
from ..components import SDComponents, open_model
from ..model import encode_prompt
from . import data, load_classifier
from .classifier import ConvFeatures

# The applications' sampler: DPM-Solver-2M on eq. 10, guidance 4 (the quality bar's), an RK4 adjoint.
SAMPLER = apps.Sampler(steps=10, solver="dpm2m", guidance_scale=4.0, gradient="adjoint")
PAPER_TABLE2 = {"AdjointDPM": -7.1, "DOODL": -5.3}  # per-class FID change on Stanford Dogs, %
PAPER_TABLE3 = {"242": 63.9, "430": 75.8, "779": 45.3, "859": 58.22, "895": 52.6, "average (10 classes)": 51.2}
STYLE_IMAGE = "china.jpg"


@dataclass(frozen=True)
class Sizes:
    guided_seeds: int = 64
    guided_iters: int = 18
    guided_lr: float = 0.1
    audit_per_class: int = 32
    audit_candidates: int = 36
    audit_iters: int = 6
    taus: tuple = (0.2, 0.4, 0.8)
    curve_per_class: int = 6   # samples per class for the taus other than 0.8
    style_seeds: int = 2
    style_epochs: int = 3
    style_lr: float = 3e-3
    style_weight: float = 3e3  # w_s of eq. 13 (w_c = 1)
    style_unseen: int = 2      # unseen seeds per prompt for the before/after measurement
    invert_targets: int = 16
    invert_iters: int = 25
    invert_lr: float = 0.1
    invert_eval: int = 32      # fresh seeds to read the learned token's digit


QUICK = Sizes(guided_seeds=4, guided_iters=2, audit_per_class=2, audit_candidates=3, audit_iters=2, taus=(0.4, 0.8),
              curve_per_class=1, style_seeds=1, style_epochs=1, style_unseen=1, invert_targets=2, invert_iters=2,
              invert_eval=4)


def _fid(classifier, images, real) -> float:
    with torch.no_grad():
        return distance_between(classifier.embed(images).numpy(), classifier.embed(data.to_unit(real)).numpy())


def vocabulary_expansion(comps: SDComponents, classifier, sizes: Sizes, sampler: apps.Sampler, out: Path,
                         progress: bool = True) -> dict:
    """Table 2's analogue: optimise ``x_T`` of "a handwritten digit nine" toward the classifier's nine."""
    seeds = list(range(1000, 1000 + sizes.guided_seeds))
    r = apps.guided_sampling(comps, classifier, data.prompt(data.UNSEEN), data.UNSEEN, seeds, iters=sizes.guided_iters,
                             lr=sizes.guided_lr, sampler=sampler, progress=progress)
    real, _ = data.load("heldout", [data.UNSEEN])
    before, after = r["images"]["before"], r["images"]["after"]
    with torch.no_grad():
        read_before, read_after = classifier(before).argmax(1), classifier(after).argmax(1)
    fid_before, fid_after = _fid(classifier, before, real), _fid(classifier, after, real)
    result = {"prompt": r["prompt"], "seeds": len(seeds), "iters": sizes.guided_iters, "lr": sizes.guided_lr,
              "p_nine_before": float(torch.tensor(r["p_target_before"]).mean()),
              "p_nine_after": float(torch.tensor(r["p_target_after"]).mean()),
              "read_as_nine_before": float((read_before == data.UNSEEN).float().mean()),
              "read_as_nine_after": float((read_after == data.UNSEEN).float().mean()),
              "digit_fid_before": fid_before, "digit_fid_after": fid_after,
              "fid_change_percent": 100 * (fid_after - fid_before) / fid_before, "heldout_real_nines": len(real),
              "losses": r["losses"], "paper_fid_change_percent": PAPER_TABLE2, **asdict(sampler)}
    apps.save_images(out / "table2.png", {"before (prompt: nine)": before[:8], "after guidance": after[:8],
                                          "real held-out nines": data.to_unit(real[:8])})
    files.write_json(out / "table2.json", result, significant=6)
    (out / "table2.md").write_text(
        "# Table 2 on the digits model: vocabulary expansion toward a digit never seen in training\n\n"
        f"\"{r['prompt']}\", {len(seeds)} seeds, AdamW on x_T for {sizes.guided_iters} steps (lr {sizes.guided_lr}, each "
        "x_T rescaled to its initial norm after every step, as DOODL does) "
        f"through the adjoint ({sampler.steps} DPM-Solver-2M steps, guidance {sampler.guidance_scale}). digit-FID: "
        f"the digit classifier's penultimate features against the {len(real)} held-out real nines (the paper: "
        "Inception FID against Stanford Dogs).\n\n"
        "| | p(nine) | read as nine | digit-FID to real nines | FID change |\n|---|---|---|---|---|\n"
        f"| before | {result['p_nine_before']:.3f} | {100 * result['read_as_nine_before']:.0f}% | {fid_before:.2f} | |\n"
        f"| after (AdjointDPM, ours) | {result['p_nine_after']:.3f} | {100 * result['read_as_nine_after']:.0f}% | "
        f"{fid_after:.2f} | {result['fid_change_percent']:+.1f}% |\n"
        f"| paper, Stanford Dogs: AdjointDPM | | | | {PAPER_TABLE2['AdjointDPM']:+.1f}% |\n"
        f"| paper, Stanford Dogs: DOODL | | | | {PAPER_TABLE2['DOODL']:+.1f}% |\n")
    return result


def audit_table(comps: SDComponents, classifier, sizes: Sizes, sampler: apps.Sampler, out: Path,
                progress: bool = True) -> dict:
    """Table 3's analogue: untargeted bounded-noise audit per digit, at tau = 0.8 and over tau."""
    classes = {k: data.prompt(k) for k in range(10) if k != data.UNSEEN}
    seeds = list(range(2000, 2000 + sizes.audit_candidates))
    runs = {}
    for tau in sizes.taus:  # the same candidate seeds: the smaller runs audit the first samples of the main one
        per_class = sizes.audit_per_class if tau == 0.8 else sizes.curve_per_class
        runs[tau] = apps.audit(comps, classifier, classes, seeds, tau=tau, iters=sizes.audit_iters,
                               per_class=per_class, sampler=sampler, progress=progress)
    main, grid = runs[0.8], {}
    shown = [tau for tau in (0.4, 0.8) if tau in runs]  # a mild bound beside the paper's
    for label in list(classes)[:4]:
        for tau in shown:
            images = runs[tau]["images"]
            mine = images["labels"] == label
            if tau == shown[0]:
                grid[f"{data.NAMES[label]}: clean"] = images["clean"][mine][:6]
            read = ", ".join(data.NAMES[int(k)] for k in images["read_as"][mine][:6])
            grid[f"{data.NAMES[label]}: tau {tau} (read as {read})"] = images["attacked"][mine][:6]
    apps.save_images(out / "table3.png", grid)
    result = {"tau": 0.8, "iters": sizes.audit_iters, "candidate_seeds": len(seeds),
              "rows": [{k: r[k] for k in ("label", "prompt", "audited", "changed", "rate", "image_change")}
                       for r in main["rows"]],
              "rate": main["rate"], "max_abs_delta": main["max_abs_delta"],
              "curve": {str(tau): {"rate": run["rate"], "audited": sum(r["audited"] for r in run["rows"]),
                                   "image_change": _mean([r["image_change"] for r in run["rows"]])}
                        for tau, run in runs.items()},
              "paper_success_percent": PAPER_TABLE3, **asdict(sampler)}
    files.write_json(out / "table3.json", result, significant=6)
    lines = ["| digit | audited (drawn and read correctly) | decision changed | success | mean pixel change |",
             "|---|---|---|---|---|"]
    lines += [f"| {data.NAMES[r['label']]} | {r['audited']} | {r['changed']} | {apps.common.percent(r['rate'])} | "
              f"{r['image_change']:.3f} |" for r in main["rows"]]
    lines.append(f"| **all nine digits** | {sum(r['audited'] for r in main['rows'])} | "
                 f"{sum(r['changed'] for r in main['rows'])} | **{apps.common.percent(main['rate'])}** | "
                 f"{result['curve']['0.8']['image_change']:.3f} |")
    curve = ["| tau | audited | success | mean pixel change |", "|---|---|---|---|"]
    curve += [f"| {tau} | {v['audited']} | {apps.common.percent(v['rate'])} | {v['image_change']:.3f} |"
              for tau, v in result["curve"].items()]
    paper = " / ".join(f"{k} {v}%" for k, v in PAPER_TABLE3.items())
    (out / "table3.md").write_text(
        "# Table 3 on the digits model: bounded initial noise that flips the classifier\n\n"
        f"For each digit, {sizes.audit_candidates} seeds are drawn; the first {sizes.audit_per_class} that the "
        "classifier reads correctly are audited: projected signed-gradient steps on delta, ||delta||_inf <= tau, at "
        f"most {sizes.audit_iters} steps, a sample stopping when its decision changes; untargeted (away from the "
        "drawn digit; the paper's App. C attack was targeted); gradients through the adjoint. Pixel change: the mean "
        "absolute difference between the clean and the final image, in [0, 1].\n\n" + "\n".join(lines) +
        f"\n\nOver tau (the smaller taus on the first {sizes.curve_per_class} audited samples of each digit):\n\n"
        + "\n".join(curve) +
        "\n\nOn these 256-dimensional latents tau = 0.8 is a large change of x_T (the flipped images are visibly "
        "different, table3.png); at tau = 0.4 the images stay close and fewer decisions flip.\n\n"
        f"Paper (ImageNet diffusion model + ResNet-50, tau = 0.8): {paper}.\n")
    return result


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def stylization(comps: SDComponents, classifier, sizes: Sizes, sampler: apps.Sampler, out: Path,
                progress: bool = True) -> dict:
    """Eq. 13 with the classifier's convolutions as the feature network (VGG-19 cannot be
    downloaded here), measured on unseen noise-prompt pairs."""
    from ..nets import gram
    features = ConvFeatures(classifier)
    style = apps.read_image(f"sklearn:{STYLE_IMAGE}", comps.image_size)
    prompts = [data.prompt(k) for k in range(10) if k != data.UNSEEN]
    train_seeds = list(range(3000, 3000 + sizes.style_seeds))
    unseen = [(p, 4000 + i) for p in prompts for i in range(sizes.style_unseen)]
    with torch.no_grad():
        style_target = [gram(f) for f in features(style)[0]]

    def measure():
        images = apps.generate(comps, [p for p, _ in unseen], [s for _, s in unseen], sampler)
        with torch.no_grad():
            grams = features(images)[0]
            loss = float(sum(((gram(f) - g) ** 2).mean() for f, g in zip(grams, style_target)))
            labels = torch.tensor([prompts.index(p) for p, _ in unseen])
            recognised = float((classifier(images).argmax(1) == labels).float().mean())
        return images, loss, recognised

    before, loss_before, recognised_before = measure()
    with tempfile.TemporaryDirectory() as run:  # its checkpoint and fine-tuned UNet are not results to keep
        r = apps.stylize(comps, features, style, prompts, train_seeds, epochs=sizes.style_epochs, lr=sizes.style_lr,
                         w_style=sizes.style_weight, sampler=sampler, out=Path(run), save_every=10_000,
                         progress=progress)
    after, loss_after, recognised_after = measure()
    result = {"style_image": f"sklearn.datasets.load_sample_image({STYLE_IMAGE!r})", "train_pairs": r["pairs"],
              "epochs": sizes.style_epochs, "lr": sizes.style_lr, "trained_parameters": r["trained_parameters"],
              "unseen_pairs": len(unseen), "style_loss_unseen_before": loss_before,
              "style_loss_unseen_after": loss_after, "recognised_unseen_before": recognised_before,
              "recognised_unseen_after": recognised_after, "train_losses": r["losses"], **asdict(sampler)}
    apps.save_images(out / "stylize.png", {f"style (sklearn's {STYLE_IMAGE})": style,
                                           "unseen pairs, original model": before[::sizes.style_unseen][:9],
                                           "unseen pairs, stylized model": after[::sizes.style_unseen][:9]})
    files.write_json(out / "stylize.json", result, significant=6)
    return result


def inversion(comps: SDComponents, classifier, sizes: Sizes, sampler: apps.Sampler, out: Path,
              progress: bool = True) -> dict:
    """App. A: a new token learned from real nines (the training template), reused in another."""
    token, templates = "<nine>", (data.TEMPLATE, "a handwritten {}")
    real, _ = data.load("train", [data.UNSEEN])
    targets = data.to_unit(real[: sizes.invert_targets])
    seeds = list(range(5000, 5000 + len(targets)))
    eval_seeds = list(range(6000, 6000 + sizes.invert_eval))

    def nine_rate(prompt):
        """The images, the share read as nine, and the mean p(nine)."""
        images = apps.generate(comps, [prompt] * len(eval_seeds), eval_seeds, sampler)
        with torch.no_grad():
            p_nine = torch.softmax(classifier(images), 1)[:, data.UNSEEN]
            read = classifier(images).argmax(1) == data.UNSEEN
        return images, float(read.float().mean()), float(p_nine.mean())

    word_images, word_rate, word_p = nine_rate(data.prompt(data.UNSEEN))
    r = apps.invert_embedding(comps, targets, seeds, token=token, init_token="nine", template=templates[0],
                              iters=sizes.invert_iters, lr=sizes.invert_lr, sampler=sampler, progress=progress)
    rows = {t.format(token): nine_rate(t.format(token)) for t in templates}
    result = {"token": token, "targets": f"{len(targets)} real nines of the training split", "iters": sizes.invert_iters,
              "lr": sizes.invert_lr, "eval_seeds": len(eval_seeds), "nine_rate_word": word_rate, "p_nine_word": word_p,
              "nine_rate_token": {p: rate for p, (_, rate, _) in rows.items()},
              "p_nine_token": {p: p_nine for p, (_, _, p_nine) in rows.items()}, "losses": r["losses"],
              **asdict(sampler)}
    grid = {"targets (real nines)": targets[:8], f"'{data.prompt(data.UNSEEN)}'": word_images[:8]}
    grid.update({f"'{p}'": images[:8] for p, (images, _, _) in rows.items()})
    apps.save_images(out / "invert.png", grid)
    files.write_json(out / "invert.json", result, significant=6)
    return result


def run_all(out: Path, quick: bool = False, progress: bool = True, model: str = "digits") -> str:
    """Every experiment on the committed digits model; returns the summary (also ``README.md`` in ``out``)."""
    sizes, out = (QUICK if quick else Sizes()), Path(out)
    sampler = replace(SAMPLER, steps=4) if quick else SAMPLER
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier()
    results = {}
    for name, experiment in (("table2", vocabulary_expansion), ("table3", audit_table), ("stylize", stylization),
                             ("invert", inversion)):
        comps = open_model(model, "cpu")  # fresh weights and tokenizer for each experiment
        results[name] = experiment(comps, classifier, sizes, sampler, out, progress)
    return summary(results, out)


def summary(results: dict, out: Path) -> str:
    t2, t3, st, inv = results["table2"], results["table3"], results["stylize"], results["invert"]
    token_rates = ", ".join(f"\"{p}\" {100 * v:.0f}%" for p, v in inv["nine_rate_token"].items())
    text = ("# The applications on the digits model\n\n"
            f"- Vocabulary expansion (table2.md): p(nine) {t2['p_nine_before']:.3f} -> {t2['p_nine_after']:.3f}, "
            f"read as nine {100 * t2['read_as_nine_before']:.0f}% -> {100 * t2['read_as_nine_after']:.0f}%, digit-FID "
            f"to real nines {t2['fid_change_percent']:+.1f}% (paper, dogs: {PAPER_TABLE2['AdjointDPM']:+.1f}%).\n"
            f"- Audit (table3.md): {100 * t3['rate']:.1f}% of correctly drawn digits flipped at tau = 0.8 "
            f"(paper: {PAPER_TABLE3['average (10 classes)']}%).\n"
            f"- Stylization (stylize.png): style loss on unseen pairs {st['style_loss_unseen_before']:.4g} -> "
            f"{st['style_loss_unseen_after']:.4g}; digits still recognised {100 * st['recognised_unseen_before']:.0f}% "
            f"-> {100 * st['recognised_unseen_after']:.0f}%.\n"
            f"- Inversion (invert.png): read as nine with the word \"nine\" {100 * inv['nine_rate_word']:.0f}%; "
            f"with the learned token: {token_rates}.\n")
    (out / "README.md").write_text(text)
    return text


def morph_table(comps: SDComponents, classifier, out: Path, pairs: int = 16, iters: int = 60, lr: float = 0.1,
                steps: int = 10, seed: int = 0, progress: bool = True) -> dict:
    """The poster's Table 1 on the digits model: pairs of real held-out digits of two different
    classes (the identities), F the classifier's penultimate features, the threshold at 0.1 % FMR
    over every impostor pair of held-out digits."""
    from ..apps.morph import match_threshold, morph_table as table
    images, labels = data.load("heldout")
    images = data.to_unit(images)
    threshold = match_threshold(classifier.embed, images, labels)
    gen = torch.Generator().manual_seed(seed)
    known = torch.nonzero(labels != data.UNSEEN).flatten()
    first = known[torch.randperm(len(known), generator=gen)[:pairs]]
    second = torch.stack([(lambda pool: pool[torch.randint(len(pool), (1,), generator=gen)])(
        known[labels[known] != labels[i]])[0] for i in first])
    a, b = images[first].to(comps.device), images[second].to(comps.device)
    with torch.no_grad():
        cond_a = encode_prompt(comps, [data.prompt(int(k)) for k in labels[first]])
        cond_b = encode_prompt(comps, [data.prompt(int(k)) for k in labels[second]])
    what = ("of real held-out digits of two different classes (the identities); F: the digit classifier's "
            "penultimate features, threshold where F falsely matches 0.1 % of the impostor pairs among the held-out "
            "digits")
    classes = [[int(labels[i]), int(labels[j])] for i, j in zip(first, second)]
    return table(comps, classifier.embed, a, b, cond_a, cond_b, out, threshold=threshold, what=what, steps=steps,
                 iters=iters, lr=lr, seed=seed, record={"classes": classes}, progress=progress)
