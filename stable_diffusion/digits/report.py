"""Markdown from the digits experiments' data (:mod:`stable_diffusion.digits.experiments`): every
number in a table or sentence here is read from the result it describes, so a rerun with other
outcomes writes other words, never a claim its numbers contradict."""
from __future__ import annotations

from adjointdpm.report import markdown_table

from . import data

READERS = ("guide", "judge_svc", "judge_net")
READER_NAMES = {"guide": "guide", "judge_svc": "SVC judge", "judge_net": "LeNet judge"}


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


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
            f"Images: table2.png; raw arrays (float32, N x 32 x 32 x 3 in [0, 1]): table2_images.npz. How each "
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
    t2, t3, st, inv = results["table2"], results["table3"], results["stylize"], results["invert"]
    main3 = t3["by_tau"][str(t3["tau"])]
    tok = inv["rows"][inv["chosen"]]
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
            f"- Inversion (invert.md): a token learned from real nines ({inv['chosen']}) is read as "
            f"nine by the SVC judge {pct(tok['judge_svc_reads_nine'])} and the LeNet judge "
            f"{pct(tok['judge_net_reads_nine'])} of fresh samples (the generic caption: "
            f"{pct(inv['rows']['the generic caption']['judge_svc_reads_nine'])} / "
            f"{pct(inv['rows']['the generic caption']['judge_net_reads_nine'])}; the whole conditioning optimised "
            f"freely: {pct(inv['rows']['the whole conditioning, free']['judge_svc_reads_nine'])} / "
            f"{pct(inv['rows']['the whole conditioning, free']['judge_net_reads_nine'])}).\n"
            + morph_line(results["morph"]))


def morph_line(r: dict) -> str:
    """The morph's summary: each attack's MMPMR under the attacked identity model and under the other."""
    rows = "; ".join(f"{row['attack']} " + " / ".join(pct(row["mmpmr"][w]) for w in r["thresholds"])
                     for row in r["rows"])
    return (f"- Morphing (morph.md), {r['pairs']} pairs of same-class held-out digits, MMPMR under "
            f"{' / '.join(r['thresholds'])}: {rows}.\n")


def invert(r: dict) -> str:
    header = ["", "guide reads nine", "SVC judge", "LeNet judge", "adversarial", "judge-FID to real nines", "KID"]
    rows = [[name] + [pct(m[f"{who}_reads_nine"]) for who in READERS] + [pct(m["adversarial_rate"]),
                                                                          f"{m['judge_fid']:.3f}", f"{m['judge_kid']:.4f}"]
            for name, m in r["rows"].items()]
    return ("# Inversion (App. A) on the digits model: a token for nine, judged\n\n"
            f"A token `{r['token']}` in \"{r['template']}\", initialised at {r['init']}, learned from {r['targets']} "
            f"in {r['iters']} AdamW steps (lr {r['lr']}), then drawn from {r['eval_seeds']} noises it never saw. The "
            "paper's loss fits the images from fixed noises to the targets; the second loss matches the mean of the "
            "guide's features of images from fresh noises to the targets'. The last row optimises the whole "
            "conditioning (every text embedding) with the second loss and as many steps: more freedom than a token "
            "has, though not a bound on what a token reaches.\n\n"
            + markdown_table(header, rows) + "\n")


def quality(r: dict) -> str:
    """``quality.md`` from the result of :func:`stable_diffusion.digits.quality.evaluate`."""
    readers = list(r["rows"][0]["read_as"])
    header = ["prompt", *(f"{who} reads it" for who in readers), "the net judge reads",
              "judge-FID / KID to held-out real", "real train vs held-out"]
    rows = []
    for row in r["rows"]:
        counts = row["read_as"]["net"]
        read = ", ".join(f"{data.NAMES[k]} {c}" for k, c in sorted(enumerate(counts), key=lambda kc: -kc[1]) if c)
        if row["digit"] is None:
            shares, fid, floor = ["-"] * len(readers), "-", "-"
        else:
            shares = [f"{100 * row['recognised'][who]:.0f}%" for who in readers]
            fid = f"{row['judge_fid']:.2f} / {row['judge_kid']:.3f}"
            floor = f"{row['judge_fid_real_train_vs_heldout']:.2f} / {row['judge_kid_real_train_vs_heldout']:.3f}"
        note = (" (never named in training)" if row["digit"] == data.UNSEEN else
                " (generic caption)" if row["digit"] is None else "")
        rows.append([row["prompt"] + note, *shares, read, fid, floor])
    held = [row["heldout_real"] for row in r["rows"] if row["digit"] is not None]
    shares = lambda key: ", ".join(f"{who} {100 * v:.0f}%" for who, v in r[key].items())  # noqa: E731
    return (f"# Does the digits model draw the prompted digit?\n\n{r['sampler']}; {r['rows'][0]['samples']} samples "
            "per prompt, read by the guide (the digit classifier that guided sampling and the audit differentiate "
            "through) and by the two judges that never guide (handwritten.judges: an SVC on the 8x8 pixels, a LeNet-5 "
            "trained on other digits). Judge-FID and KID in the LeNet's 84-d features against the held-out real "
            f"digits of the class ({min(held)} to {max(held)} per digit); the last column compares the real training "
            "digits of the class with the same held-out ones: the floor at these sample sizes.\n\n"
            + markdown_table(header, rows) +
            f"\n\nBar: every reader recognises at least {100 * r['bar']:.0f}% of each digit zero to eight: "
            f"{'met' if r['meets_bar'] else 'NOT met'} (lowest: {shares('lowest_recognised_named')}). "
            f"\"{data.prompt(data.UNSEEN)}\" is drawn as a nine by {shares('nine_prompt_drawn_as_nine')} of the "
            f"time; the generic caption \"{data.GENERIC}\" draws nines in {shares('generic_drawn_as_nine')}.\n")
