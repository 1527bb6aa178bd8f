"""The independent judges (handwritten.judges): trained on images the guide never saw, sharing no
weights with it, reading real held-out digits correctly; and the shared split."""
import torch

from handwritten import data
from handwritten.judges import Judges, JudgeNet, accuracy, judges, load_net, train_net


def test_the_split_is_three_disjoint_parts_of_every_class():
    raw, labels, part = data.scans()
    assert len(raw) == 1797 and set(part.tolist()) == {0, 1, 2}
    for k in range(10):
        counts = torch.bincount(part[labels == k], minlength=3)
        n = int((labels == k).sum())
        assert int(counts[0]) == round(0.3 * n) and abs(int(counts[1]) - int(counts[2])) <= 1
    train, _ = data.load("train")
    guide, _ = data.load("guide")
    judge, _ = data.load("judge")
    held, _ = data.load("heldout")
    assert len(train) == len(guide) + len(judge) and len(train) + len(held) == 1797
    flat = lambda x: {tuple(r.tolist()) for r in data.load_scans(x)[0].flatten(1)}  # noqa: E731
    # no scan in two parts (the dataset has no duplicate scans across these parts either)
    assert not flat("guide") & flat("judge") and not flat("heldout") & (flat("guide") | flat("judge"))


def test_to_scan_inverts_block_averaging_exactly_and_the_round_trip_closely():
    scans, _ = data.load_scans("heldout")
    blocks = scans[:, :, None, :, None].expand(-1, 8, 4, 8, 4).reshape(-1, 32, 32) / 16  # each pixel a 4x4 block
    assert torch.allclose(data.to_scan(blocks[:, None].expand(-1, 3, -1, -1)), scans, atol=1e-5)
    round_trip = data.to_scan(data.to_unit(data.to_images(scans)))
    assert float((round_trip - scans).abs().mean()) < 1.5  # intensities 0..16: the bilinear blur only


def test_judges_read_real_held_out_digits():
    result = accuracy(judges())
    assert result["accuracy"]["svc"] >= 0.95 and result["accuracy"]["net"] >= 0.95
    assert result["svc_accuracy_on_the_raw_8x8_scans"] >= 0.97


def test_judges_share_no_weights_and_no_training_image_with_the_guide():
    from stable_diffusion.digits import load_digit_classifier
    guide = load_digit_classifier()
    ours = {p.data_ptr() for p in load_net().parameters()} | {p.data_ptr() for p in judges().net.parameters()}
    assert not ours & {p.data_ptr() for p in guide.parameters()}
    assert not isinstance(judges().net, type(guide))
    shapes = {tuple(p.shape) for p in guide.parameters()}
    assert not shapes & {tuple(p.shape) for p in JudgeNet().parameters() if p.dim() > 1}  # another architecture
    # the SVC's support vectors are judge-split scans, none of the guide's
    guide_scans = {tuple(r.tolist()) for r in data.load_scans("guide")[0].flatten(1)}
    support = {tuple(r) for r in judges().svc.support_vectors_.tolist()}
    assert support and not support & guide_scans


def test_a_few_training_steps_lower_the_loss_and_judges_read_every_class():
    net = train_net(steps=60, batch=32, progress=False)
    images, labels = data.load("judge")
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(net(data.to_unit(images)), labels)
    assert float(loss) < 2.0  # from ln 10 = 2.3 at initialisation
    read = Judges(net).read(data.to_unit(images[:20]))
    assert set(read) == {"svc", "net"} and all(len(v) == 20 for v in read.values())
