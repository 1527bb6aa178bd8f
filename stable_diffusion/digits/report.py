"""Markdown from the digits experiments' data (:mod:`stable_diffusion.digits.experiments`): every
number in a table or sentence here is read from the result it describes, so a rerun with other
outcomes writes other words, never a claim its numbers contradict."""
from __future__ import annotations

import functools

from adjointdpm.tools.report import markdown_table, percent

from . import data

READERS = ("guide", "judge_svc", "judge_net")
READER_NAMES = {"guide": "guide", "judge_svc": "SVC judge", "judge_net": "LeNet judge"}


pct = functools.partial(percent, decimals=0)  # this report's shares, in whole percents


def _reads(result: dict, name: str, suffix: str = "") -> list[str]:
    return [pct(result[f"{who}_reads_{name}{suffix}"]) for who in READERS]


def table2(r: dict) -> str:
    name = data.NAMES[r["target"]]
    header = ["", "guide reads nine", "SVC judge reads nine", "LeNet judge reads nine", "adversarial (guide: nine, "
              "every judge: not)", "judge-FID to real nines", "KID", "judge-FID change"]
    rows = [["before"] + _reads(r, name, "_before") + [pct(r["adversarial_rate_before"]),
                                                        f"{r['judge_fid_before']:.3f}", f"{r['judge_kid_before']:.4f}", ""],
            ["after (AdjointDPM, ours)"] + _reads(r, name, "_after") + [
                pct(r["adversarial_rate_after"]), f"{r['judge_fid_after']:.3f}", f"{r['judge_kid_after']:.4f}",
                f"{r['judge_fid_change_percent']:+.1f}%"]]
    rows += [[f"paper, Stanford Dogs: {k}"] + [""] * 6 + [f"{v:+.1f}%"] for k, v in r["paper_fid_change_percent"].items()]
    restraints = r["restraints"]
    how = ("SGD with momentum {momentum}, gradients clipped to +-{clip}, a kick of {kick} N(0, I) per step"
           .format(**restraints) if restraints["momentum"] is not None else "AdamW")
    return (f"# Table 2 on the digits model: vocabulary expansion, judged by readers that never guided it\n\n"
            f"\"{r['prompt']}\" (the caption under which the model saw nines, never with their name), "
            f"{r['seeds']} seeds, {r['iters']} steps on x_T toward the guide's nine: {how}, lr {r['lr']}, x_T "
            f"rescaled to its initial norm after every step, the guide's loss averaged over {restraints['shifts']} "
            f"random shifts of up to {restraints['max_shift']} pixels; gradients through the adjoint "
            f"({r['sampler']['steps']} DPM-Solver-2M steps, guidance {r['sampler']['guidance_scale']}). Read by the "
            "guide and by two judges trained on other images (handwritten.judges). Judge-FID and KID: the LeNet "
            f"judge's 84-d features against the {r['heldout_real_nines']} held-out real nines (the paper: "
            "Inception FID against Stanford Dogs).\n\n" + markdown_table(header, rows) + "\n\n"
            "Images: table2.png; raw arrays (float32, N x 32 x 32 x 3 in [0, 1]): table2_images.npz. How each "
            "route and restraint does: table2_ablation.md.\n")


def ablation(r: dict) -> str:
    header = ["route", "target", "guide reads target", "SVC judge", "LeNet judge", "adversarial", "judge-FID to real "
              "target", "KID"]
    rows = []
    for row in r["rows"]:
        name = data.NAMES[row["target"]]
        rows.append([row["route"], name] + _reads(row, name) + [pct(row["adversarial_rate"]),
                                                                f"{row['judge_fid']:.3f}", f"{row['judge_kid']:.4f}"])
    return ("# Table 2's routes side by side: how often each reader reads the target\n\n"
            f"{r['seeds']} seeds each (the same seeds in every row), {r['iters']} steps on x_T, gradients through the "
            f"adjoint ({r['sampler']['steps']} DPM-Solver-2M steps, guidance {r['sampler']['guidance_scale']}). "
            "\"Not guided\" rows are the prompts' own samples. Adversarial: the guide reads the target while every "
            "judge reads something else. Judge-FID and KID in the LeNet judge's features against the held-out real "
            "images of the target.\n\n" + markdown_table(header, rows)
            + "\n\nThe images, ten per route: table2_ablation.png.\n")


def stand_in(r: dict) -> str:
    """Nothing when the audit's main tau is the paper's; else which tau it stands in for."""
    if r["tau"] == r["paper_tau"]:
        return ""
    return f", standing in for the paper's {r['paper_tau']} (not among the taus run)"


def table3(r: dict) -> str:
    main = r["by_tau"][str(r["tau"])]
    header = ["digit", "audited (drawn and read correctly)", "guide's decision flipped", "flipped, still the digit "
              "to the SVC judge", "to the LeNet judge", "to every judge (success)", "mean pixel change"]
    rows = [[data.NAMES[d["label"]], d["audited"], d["changed"], pct(d["flipped_and_still_svc"]),
             pct(d["flipped_and_still_net"]), pct(d["flipped_and_still_every_judge"]),
             "-" if d["image_change"] is None else f"{d['image_change']:.3f}"] for d in main["rows"]]
    rows.append(["**all nine digits**", main["audited"], main["flipped"], "", "",
                 f"**{pct(main['success_flipped_and_original_to_every_judge'])}**", f"{main['image_change']:.3f}"])
    curve_header = ["tau", "audited", "guide's decision flipped", "among flipped: SVC judge still reads the digit",
                    "LeNet judge", "every judge", "success: flipped and still the digit to every judge",
                    "mean pixel change", "KID to real digits: clean / attacked"]
    curve = [[tau, v["audited"], pct(v["rate"]), pct(v["judge_svc_reads_original_among_flipped"]),
              pct(v["judge_net_reads_original_among_flipped"]), pct(v["judge_every_judge_reads_original_among_flipped"]),
              pct(v["success_flipped_and_original_to_every_judge"]),
              "-" if v["image_change"] is None else f"{v['image_change']:.3f}",
              "-" if v["judge_kid_to_real_clean"] is None else
              f"{v['judge_kid_to_real_clean']:.3f} / {v['judge_kid_to_real_attacked']:.3f}"] for tau, v in r["by_tau"].items()]
    paper = " / ".join(f"{k} {v}%" for k, v in r["paper_success_percent"].items())
    return ("# Table 3 on the digits model: bounded initial noise that flips the guide, judged\n\n"
            f"For each digit, {r['candidate_seeds']} seeds are drawn; the first {r['audit_per_class']} that the guide "
            "reads correctly are audited: projected signed-gradient steps on delta, ||delta||_inf <= tau, at most "
            f"{r['iters']} steps, a sample stopping when the guide's decision changes; untargeted (the paper's App. C "
            "attack was targeted); gradients through the adjoint. The paper's point is an image that still shows its "
            "class but flips the classifier: a success here is a flipped decision on an image that both judges "
            "(which never guided the attack) still read as the digit drawn. Pixel change: the mean absolute "
            "difference between the clean and the attacked image, in [0, 1]. KID in the LeNet judge's features against "
            "the held-out real digits zero to eight: how far each set is from real digits.\n\n"
            + (f"At tau = {r['tau']}{stand_in(r)}" if stand_in(r) else f"At the paper's tau = {r['tau']}")
            + ":\n\n" + markdown_table(header, rows) +
            f"\n\nOver tau (the taus other than {r['tau']} on the first {r['curve_per_class']} audited samples of each "
            "digit):\n\n" + markdown_table(curve_header, curve) +
            f"\n\nPaper (ImageNet diffusion model + ResNet-50, tau = {r['paper_tau']}, success = flipped): {paper}.\n\n"
            "Images: table3.png; raw arrays: table3_images.npz (clean, attacked, labels = the digit drawn, "
            "read_as = the guide's decision after the attack).\n")


def summary(results: dict) -> str:
    t2, t3, st = results["table2"], results["table3"], results["stylize"]
    main3 = t3["by_tau"][str(t3["tau"])]
    return ("# The applications on the digits model, read by judges that never guided them\n\n"
            f"- Vocabulary expansion (table2.md): \"{t2['prompt']}\" guided toward nine. Read as nine by the SVC judge "
            f"{pct(t2['judge_svc_reads_nine_before'])} -> {pct(t2['judge_svc_reads_nine_after'])}, by the LeNet judge "
            f"{pct(t2['judge_net_reads_nine_before'])} -> {pct(t2['judge_net_reads_nine_after'])} (the guide: "
            f"{pct(t2['guide_reads_nine_before'])} -> {pct(t2['guide_reads_nine_after'])}); adversarial "
            f"{pct(t2['adversarial_rate_after'])}; judge-FID to real nines {t2['judge_fid_change_percent']:+.1f}% "
            f"(paper, dogs: {t2['paper_fid_change_percent']['AdjointDPM']:+.1f}%).\n"
            f"- Audit (table3.md), tau = {t3['tau']}{stand_in(t3)}: the guide's decision flipped on "
            f"{pct(main3['rate'])} of correctly drawn digits; flipped and still the digit to every judge (the paper's success): "
            f"{pct(main3['success_flipped_and_original_to_every_judge'])} (paper: "
            f"{t3['paper_success_percent']['average (10 classes)']}%).\n"
            f"- Stylization (stylize.png): inked share of unseen samples {pct(st['inked_share_before'])} -> "
            f"{pct(st['inked_share_after'])} (the bold reference: {pct(st['style_ink']['inked_share'])}); read as the "
            f"prompted digit by the SVC judge {pct(st['judge_svc_reads_prompted_digit_before'])} -> "
            f"{pct(st['judge_svc_reads_prompted_digit_after'])}, by the LeNet judge "
            f"{pct(st['judge_net_reads_prompted_digit_before'])} -> {pct(st['judge_net_reads_prompted_digit_after'])}.\n"
            + effect_line(results["effect"])
            + morph_line(results["morph"]))


def effect_line(r: dict) -> str:
    """App. A's summary: the slants on unseen pairs and the share moved half way."""
    slant = " / ".join(f"{r['unseen_slant'][w]['mean']:+.1f}" for w in ("base", "token", "keyword"))
    return (f"- Visual effect into a token (effect.md, App. A): `{r['token']}` learned on "
            f"{len(r['seeds'])} pairs of {data.NAMES[r['digit']]}s; on {r['unseen_pairs']} unseen (digit, noise) "
            f"pairs the slant is {slant} degrees (base / token / keyword), half way or more on "
            f"{pct(r['half_way_share'])}; every judge reads the prompted digit (de-skewed) in "
            f"{pct(r['judges_read_deskewed_every']['token'])} of the token's images.\n")


def morph_line(r: dict) -> str:
    """The morph's summary: each attack's MMPMR under the attacked identity model and under the other."""
    rows = "; ".join(f"{row['attack']} " + " / ".join(pct(row["mmpmr"][w]) for w in r["thresholds"])
                     for row in r["rows"])
    return (f"- Morphing (morph.md), {r['pairs']} pairs of same-class held-out digits, MMPMR under "
            f"{' / '.join(r['thresholds'])}: {rows}.\n")


def effect(r: dict) -> str:
    """``effect.md``: App. A's effect transfer, the slants and the judges' readings."""
    ways = {"base": "base prompt", "token": f"with `{r['token']}`", "keyword": f"with \"{r['keyword']}\""}
    deg = lambda s: f"{s['mean']:+.1f} ± {s['std']:.1f}"  # noqa: E731
    slants = [[f"seen: {data.NAMES[r['digit']]}, {len(r['seeds'])} noises (the training pairs)"]
              + [deg(r["seen_slant"][w]) for w in ways],
              [f"unseen: {len(r['unseen_digits'])} other digits x {r['unseen_per_digit']} fresh noises"]
              + [deg(r["unseen_slant"][w]) for w in ways]]
    judged = r["judges_read"]
    readers = [who for who in judged["base"] if not who.endswith("_deskewed")]
    header = ["unseen pairs", *(f"{who.removeprefix('judge_')} judge reads the digit (as drawn / de-skewed)"
                                for who in readers), "every judge, de-skewed"]
    rows = [[ways[w]] + [f"{pct(judged[w][who])} / {pct(judged[w][who + '_deskewed'])}" for who in readers]
            + [pct(r["judges_read_deskewed_every"][w])] for w in ways]
    goal = r["goal"]
    met = (r["half_way_share"] >= goal["half_way_share"]
           and r["judges_read_deskewed_every"]["token"] >= goal["judges_read_share"])
    refs = "; ".join(f"{name}: {deg(v)}" for name, v in r["reference_slant"].items())
    return ("# A visual effect into a token (App. A): slanted writing\n\n"
            f"Pairs from the same noises: \"{data.prompt(r['digit'])}\" and \"{data.prompt(r['digit'], True)}\" "
            f"({len(r['seeds'])} noises). A new token `{r['token']}` in \"{r['template']}\", initialised as "
            f"\"{r['init']}\", optimised in {r['iters']} AdamW steps (lr {r['lr']}) through the sampler with the "
            f"paper's loss ({r['loss']}); then used with the prompts of the other digits and fresh noises it never "
            "saw, beside the base prompt and the keyword from the same noises. Slant: the angle of the ink's "
            "least-squares axis from its second moments (handwritten.slant; positive leans right), in degrees, "
            "mean ± std.\n\n"
            + markdown_table(["", *ways.values()], slants) +
            f"\n\nReference slants: {refs}.\n\n"
            f"On the {r['unseen_pairs']} unseen pairs, the token moves the slant at least half way from the base "
            f"prompt's to the keyword's on {pct(r['half_way_share'])} (median share of the way: "
            f"{r['moved_median']:.2f}). The learned row's cosine similarity to the input embeddings: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["token_row_cosine"].items()) + ".\n\n"
            + markdown_table(header, rows) +
            "\n\nThe SVC judge reads pixels of an 8x8 scan, so a slant alone costs it digits (it reads 60 % of real "
            "held-out digits sheared by 20 degrees, 98 % of them de-skewed): the de-skewed reading asks whether the "
            "digit is still there whatever its slant.\n\n"
            f"Goal: half way on at least {pct(goal['half_way_share'])} of unseen pairs, and every judge reading the "
            f"prompted digit in at least {pct(goal['judges_read_share'])} of the token's images (de-skewed): "
            f"{'met' if met else 'NOT met'}.\n\n"
            "Images: effect.png; raw arrays: effect_images.npz (base, token, keyword: the same unseen noises and "
            "prompts; labels: the digit prompted). The token: effect_learned_embeds.safetensors (diffusers' "
            "`load_textual_inversion`).\n")


def quality(r: dict) -> str:
    """``quality.md`` from the result of :func:`stable_diffusion.digits.quality.evaluate`."""
    readers = list(r["rows"][0]["read_as"])
    header = ["prompt", *(f"{who} reads it" for who in readers), "the net judge reads", "slant (degrees)",
              "judge-FID / KID to held-out real", "real train vs held-out"]
    rows = []
    for row in r["rows"]:
        counts = row["read_as"]["net"]
        read = ", ".join(f"{data.NAMES[k]} {c}" for k, c in sorted(enumerate(counts), key=lambda kc: -kc[1]) if c)
        shares = ["-"] * len(readers) if row["digit"] is None else \
            [f"{100 * row['recognised'][who]:.0f}%" for who in readers]
        fid, floor = ("-", "-") if "judge_fid" not in row else (
            f"{row['judge_fid']:.2f} / {row['judge_kid']:.3f}",
            f"{row['judge_fid_real_train_vs_heldout']:.2f} / {row['judge_kid_real_train_vs_heldout']:.3f}")
        note = (" (never named in training)" if row["digit"] == data.UNSEEN and not row["slanted"] else
                " (generic caption)" if row["digit"] is None else " (read de-skewed)" if row["slanted"] else "")
        rows.append([row["prompt"] + note, *shares, read, f"{row['slant_mean']:+.1f} ± {row['slant_std']:.1f}",
                     fid, floor])
    held = [row["heldout_real"] for row in r["rows"] if "heldout_real" in row]
    shares = lambda key: ", ".join(f"{who} {100 * v:.0f}%" for who, v in r[key].items())  # noqa: E731
    slants = "; ".join(f"{name} {value:+.1f}" for name, value in r["slant"].items())
    return (f"# Does the digits model draw the prompted digit?\n\n{r['sampler']}; {r['rows'][0]['samples']} samples "
            "per prompt, read by the guide (the digit classifier that guided sampling and the audit differentiate "
            "through) and by the two judges that never guide (handwritten.judges: an SVC on the 8x8 pixels, a LeNet-5 "
            "trained on other digits); the slanted prompts' images are read with their slant sheared away "
            "(handwritten.slant.deskew), since the SVC misses slanted real digits. Slant: the angle of the ink's "
            "least-squares axis (handwritten.slant; positive leans right), mean ± std. Judge-FID and KID in the "
            "LeNet's 84-d features against the held-out real "
            f"digits of the class ({min(held)} to {max(held)} per digit); the last column compares the real training "
            "digits of the class with the same held-out ones: the floor at these sample sizes.\n\n"
            + markdown_table(header, rows) +
            f"\n\nBar: every reader recognises at least {100 * r['bar']:.0f}% of each digit zero to eight: "
            f"{'met' if r['meets_bar'] else 'NOT met'} (lowest: {shares('lowest_recognised_named')}; slanted, "
            f"de-skewed: {shares('lowest_recognised_slanted')}). "
            f"\"{data.prompt(data.UNSEEN)}\" is drawn as a nine by {shares('nine_prompt_drawn_as_nine')} of the "
            f"time; the generic caption \"{data.GENERIC}\" draws nines in {shares('generic_drawn_as_nine')}.\n\n"
            f"Mean slant in degrees: {slants}.\n")
