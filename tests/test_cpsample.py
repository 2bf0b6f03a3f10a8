"""CPSample: the guidance formula, τ, relabelling, the shared classifier, the χ² reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from leakbench.diffusion.classifier import COMMON_LABEL, clean_predictions, train_classifier
from leakbench.diffusion.guidance import cpsample_guided
from leakbench.diffusion.sampling import ddim_sample, ddim_timesteps
from leakbench.diffusion.schedule import make_schedule
from leakbench.stats import two_proportion_test


class LinearLogit(nn.Module):
    """p(y=1 | x) = sigmoid(w·x + b): logits (0, w·x + b), whatever t is."""

    def __init__(self, w: torch.Tensor, b: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(w.clone(), requires_grad=False)
        self.b = b

    def forward(self, x, t):
        z = x.flatten(1) @ self.w.flatten() + self.b
        return torch.stack([torch.zeros_like(z), z], dim=1)


def zero_eps(x, t):
    return torch.zeros_like(x)


def test_guidance_matches_the_closed_form_gradient():
    torch.manual_seed(0)
    sched = make_schedule("linear", 100)
    w = torch.randn(1, 4, 4)
    # Images along w with logits from strongly 0 to strongly 1, one near 0.5.
    z = torch.tensor([-6.0, -2.0, 0.1, 2.0, 6.0])
    x = z[:, None, None, None] * w / w.pow(2).sum()
    t = torch.tensor([10, 30, 50, 70, 90])
    alpha, s, tau = 0.25, 3.0, 0.001
    model = cpsample_guided(zero_eps, LinearLogit(w), schedule=sched, alpha=alpha, scale=s, tau=tau)
    with torch.no_grad():  # the sampler's setting: the wrapper must switch grad back on
        eps_hat = model(x, t)

    # Closed form: p1 = σ(z); ∇ log(τ + p0) = −p0 p1 w / (τ + p0), ∇ log(τ + p1) = p0 p1 w / (τ + p1).
    p1 = torch.sigmoid(z)
    p0 = 1 - p1
    expected = torch.zeros_like(x)
    for i in range(len(z)):
        a_bar = float(sched.alpha_bar[t[i]])
        if p0[i] < alpha:  # sure of y=1: steer toward y=0
            grad = -p0[i] * p1[i] * w / (tau + p0[i])
        elif p1[i] < alpha:
            grad = p0[i] * p1[i] * w / (tau + p1[i])
        else:
            continue
        expected[i] = -s * math.sqrt(1 - a_bar) * grad
    assert torch.allclose(eps_hat, expected, atol=1e-5, rtol=1e-4)
    # z = ±2 and ±6 are guided (p < 0.25 for one label), z = 0.1 is not.
    assert model.guided == 4 and model.pairs == 5
    assert torch.equal(eps_hat[2], torch.zeros_like(eps_hat[2]))
    # x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t moves toward the unlikely label: up the logit for z = −6.
    logit_shift = -(eps_hat.flatten(1) @ w.flatten())
    assert logit_shift[0] > 0 > logit_shift[4]


class Recording(nn.Module):
    """A TimeEncoder with spread-out logits that records the batch size of every forward."""

    def __init__(self):
        from leakbench.diffusion.unet import TimeEncoder

        super().__init__()
        torch.manual_seed(0)
        self.net = TimeEncoder(1, (8, 16)).eval().requires_grad_(False)
        self.net.head.weight.mul_(50.0)  # untrained logits sit near 0: spread them
        self.sizes: list[int] = []

    def forward(self, x, t):
        self.sizes.append(len(x))
        return self.net(x, t)


@pytest.mark.parametrize("n_guided", [3, 12, 16])
def test_guided_subset_gradient_equals_the_full_batch_gradient(n_guided):
    """Few guided: the graph is rebuilt on them alone; the gradients are the full batch's."""
    sched = make_schedule("linear", 100)
    clf, n, s, tau = Recording(), 16, 7.0, 0.001
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    t = torch.randint(0, 100, (n,), generator=gen)
    conv = nn.Conv2d(1, 1, 3, padding=1).requires_grad_(False)

    def eps_model(x, t):
        return conv(x)

    # Reference: the paper's rule and one autograd pass over the whole batch.
    xr = x.clone().requires_grad_(True)
    p = clf(xr, t).float().softmax(1)
    sure = p.detach().min(dim=1).values  # p_φ(y* | x_t, t) of the unlikely label
    alpha = float(sure.sort().values[n_guided - 1]) + 1e-7 if n_guided < n else 0.5
    toward = torch.where(p[:, 0] < alpha, 0, torch.where(p[:, 1] < alpha, 1, -1))
    guided = toward >= 0
    assert int(guided.sum()) == n_guided
    log_p = torch.log(tau + p.gather(1, toward.clamp(min=0)[:, None])[:, 0])
    (ref,) = torch.autograd.grad(log_p[guided].sum(), xr)

    model = cpsample_guided(eps_model, clf, schedule=sched, alpha=alpha, scale=s, tau=tau)
    clf.sizes.clear()
    with torch.no_grad():
        grad, mask = model.log_prob_gradient(x, t)
        sizes = list(clf.sizes)
        eps_hat, eps = model(x, t), eps_model(x, t)
    assert torch.equal(mask, guided)
    assert torch.allclose(grad[guided], ref[guided], atol=1e-6, rtol=1e-5)
    assert torch.equal(grad[~guided], torch.zeros_like(grad[~guided]))
    # Under half guided the graph is built on the guided images alone, else on the batch.
    subset = n_guided < model.full_graph_fraction * n
    assert sizes == ([n, n_guided] if subset else [n])
    # Unguided images get exactly the plain ε; guided ones ε − s√(1−ᾱ_t)∇log(τ + p).
    assert torch.equal(eps_hat[~guided], eps[~guided])
    a_bar = sched.at(t, x)
    assert torch.allclose(eps_hat[guided], (eps - s * (1 - a_bar).sqrt() * ref)[guided],
                          atol=1e-5, rtol=1e-5)
    assert model.guided == n_guided and model.pairs == n


def test_tau_keeps_a_saturated_classifier_finite():
    sched = make_schedule("linear", 100)
    w = torch.ones(1, 4, 4)
    x = torch.stack([torch.ones(1, 4, 4), -torch.ones(1, 4, 4)])  # logits ±1600: p is exactly 0 or 1
    t = torch.tensor([50, 50])
    clf = LinearLogit(w * 100)
    assert clf(x, t).softmax(1).min() == 0.0

    safe = cpsample_guided(zero_eps, clf, schedule=sched, alpha=0.5, scale=1000.0, tau=0.001)
    with torch.no_grad():
        assert safe(x, t).isfinite().all()
        out = ddim_sample(safe, x.clone(), ddim_timesteps(100, 5), schedule=sched)
    assert out.isfinite().all()

    # Without τ, log(0) has an infinite derivative times a zero one: NaN (Appendix D's problem).
    unsafe = cpsample_guided(zero_eps, clf, schedule=sched, alpha=0.5, scale=1000.0, tau=0.0)
    with torch.no_grad():
        assert unsafe(x, t).isnan().any()


def test_relabelling_gives_duplicates_one_common_label():
    from leakbench.diffusion.unet import TimeEncoder

    gen = torch.Generator().manual_seed(0)
    distinct = torch.rand(6, 1, 8, 8, generator=gen) * 2 - 1
    # Members 6 and 7 duplicate member 0 and 1 with the opposite label: no classifier gets both.
    members = torch.cat([distinct, distinct[:2]])
    labels = torch.tensor([1, 1, 0, 1, 0, 1, 0, 0])
    sched = make_schedule("linear", 20)
    torch.manual_seed(0)
    clf, final, stats = train_classifier(
        TimeEncoder(1, (8, 16)), members, labels, schedule=sched, steps=150, loss_target=0.0,
        batch_size=8, learning_rate=3e-3, ema_decay=0.9, seed=0, eval_every=50,
        relabel_steps=150, progress=False,
    )
    assert stats["relabelled"] >= 2  # one member of each conflicting pair is always wrong
    assert final[0] == final[6] and final[1] == final[7]
    changed = final != labels
    assert changed.sum() == stats["relabelled"] and (final[changed] == COMMON_LABEL).all()
    # After further training the classifier gets every member right at t = 0.
    assert torch.equal(clean_predictions(clf, members), final)
    assert stats["clean_accuracy"] == 1.0


def test_alpha_and_scale_share_one_classifier_and_denoiser(smoke_harness):
    h = smoke_harness
    a = h.target("digits", "cpsample[alpha=0.001,scale=1000]")
    b = h.target("digits", "cpsample[alpha=0.5,scale=10]")
    assert a.target.key != b.target.key  # different samples
    events = [(e.kind, e.status) for e in h.cache.events]
    assert events.count(("classifier", "built")) == 1
    assert events.count(("classifier", "hit")) == 1
    assert events.count(("denoiser", "built")) == 1
    # A different classifier size does retrain.
    h.target("digits", "cpsample[classifier_width=8]")
    assert [(e.kind, e.status) for e in h.cache.events].count(("classifier", "built")) == 2


def test_alpha_half_guides_every_step_and_target_sees_guided_eps(smoke_harness):
    h = smoke_harness
    built = h.target("digits", "cpsample[alpha=0.5,scale=10]")
    built.target.sample(8)
    figures = {m.name: m.value for m in built.defense.figures(built.target)}
    assert figures["guided_fraction"] == 1.0
    assert {"classifier_train_seconds", "classifier_loss", "classifier_accuracy",
            "sampling_seconds_per_image"} <= set(figures)

    # predict_noise is the guided ε̂, not the plain denoiser's ε.
    plain = h.target("digits", "ddim").target
    x = torch.randn(4, *built.target.splits.image_shape)
    t = torch.full((4,), 50, dtype=torch.long)
    assert not torch.allclose(built.target.predict_noise(x, t), plain.predict_noise(x, t))


def test_chi2_against_ddim_comes_from_the_harness(smoke_harness):
    h = smoke_harness
    f = h.run_cell("digits", "cpsample[alpha=0.5,scale=10]", "replication")
    ref = h.attack_finding(h.target("digits", "ddim", reference_only=True), _replication(),
                           h.context("digits"))
    _, p = two_proportion_test(f.info["k_above"], f["frac_above"].n,
                               ref.info["k_above"], ref["frac_above"].n)
    assert f["chi2_p"].value == pytest.approx(p) and f["chi2_p"].direction == "lower"
    # The reference itself reports no chi2_p, and a reference built only for the test
    # records no defense figures of its own (until its own cells run, as finish() does).
    h.finish(reference=False)
    defenses = {r["defense"] for r in h.store.rows() if r["attack"] == "defense"}
    assert defenses == {"cpsample[alpha=0.5,scale=10]"}
    d = h.run_cell("digits", "ddim", "replication")
    assert "chi2_p" not in {m.name for m in d.metrics}


def _replication():
    from audits.replication import Replication

    return Replication()


@pytest.mark.parametrize("bad", ["cpsample[alpha=0]", "cpsample[alpha=0.7]", "cpsample[scale=-1]"])
def test_bad_params_are_refused(bad):
    from leakbench.errors import UsageError
    from leakbench.harness import resolve_plugin
    from leakbench.registry import DEFENSES

    with pytest.raises(UsageError):
        resolve_plugin(DEFENSES, bad)


def test_classifier_stops_once_assumption_2_holds_at_t0():
    """Distinct members with random labels: memorised at t = 0 well before the budget."""
    from leakbench.diffusion.classifier import assumption2
    from leakbench.diffusion.unet import TimeEncoder

    gen = torch.Generator().manual_seed(1)
    members = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    sched = make_schedule("linear", 20)
    torch.manual_seed(0)
    clf, final, stats = train_classifier(
        TimeEncoder(1, (8, 16)), members, labels, schedule=sched, steps=2000, loss_target=0.05,
        batch_size=8, learning_rate=3e-3, ema_decay=0.9, seed=0, eval_every=25, progress=False)
    assert stats["reached_target"] and stats["relabelled"] == 0 and torch.equal(final, labels)
    assert stats["steps"] < 2000  # stopped by the rule, not by the budget
    check = assumption2(clf, members, labels)
    assert check["loss_t0"] < 0.05 and check["kappa"] < 0.5
    assert len(stats["loss_quarters"]) == 4


def test_classifier_that_cannot_memorise_relabels_and_says_so():
    """Identical members with opposite labels: no classifier meets Assumption 2 before relabelling."""
    from leakbench.diffusion.unet import TimeEncoder

    gen = torch.Generator().manual_seed(2)
    distinct = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
    members = torch.cat([distinct, distinct])
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])  # every image carries both labels
    sched = make_schedule("linear", 20)
    torch.manual_seed(0)
    _, final, stats = train_classifier(
        TimeEncoder(1, (8, 16)), members, labels, schedule=sched, steps=300, loss_target=0.05,
        batch_size=8, learning_rate=3e-3, ema_decay=0.9, seed=0, eval_every=25,
        relabel_steps=0, progress=False)
    assert stats["phase1_steps"] == 300 and stats["phase1_loss_t0"] >= 0.05
    assert stats["relabelled"] >= 4 and not stats["reached_target"]
    assert (final[final != labels] == COMMON_LABEL).all()


def test_cpsample_figures_report_assumption_2_and_where_it_guides(smoke_harness):
    built = smoke_harness.target("digits", "cpsample[alpha=0.5]")
    figures = {m.name: m for m in built.defense.figures(built.target)}
    for name in ("classifier_loss_t0", "classifier_kappa", "classifier_assumption2",
                 "classifier_loss_q1", "classifier_loss_q4", "holdout_guided_fraction",
                 "member_guided_fraction"):
        assert name in figures
    # At α = 1/2 every pair is guided, near holdout images too (except exact ties).
    assert figures["holdout_guided_fraction"].value > 0.99
    met = figures["classifier_assumption2"].value == 1.0
    assert ("NOT MET" in figures["classifier_loss_t0"].description) != met
