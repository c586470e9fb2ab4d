"""ddpm.py: upstream's DDPM training objective, for train.py --objective ddpm.

What upstream feizc/DiT-MoE trains its S/2 and B/2 checkpoints with
(train.py: create_diffusion(timestep_respacing="") and
diffusion.training_losses), restated in our own code: 1000 linear betas
1e-4..0.02, t uniform in 0..999 and fed to the model as that integer, x_t =
sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. The model outputs 2C channels
(learn_sigma): epsilon, then v in [-1, 1] that interpolates the log
variance between the clipped posterior variance (v = -1) and beta_t
(v = +1) (ModelVarType.LEARNED_RANGE). The loss is LossType.MSE with a
learned variance, i.e. the "hybrid" loss of Nichol & Dhariwal:

    loss = mean((eps - eps_hat)^2) + vb

where vb is the variational bound term in bits per dimension computed with
the mean frozen (eps_hat detached), so it trains only the variance channel:
KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) for t > 0 and the discretised
Gaussian decoder NLL (256 bins over [-1, 1]) at t = 0. No rescaling
(RESCALED_MSE is not what create_diffusion picks by default).

Coefficients are float64 numpy arrays indexed, then rounded to float32, as
upstream's _extract_into_tensor does.
"""
import math

import numpy as np
import torch

STEPS = 1000


def schedule():
    """The 1000-step arrays the loss needs, float64, indexed by t."""
    betas = np.linspace(1e-4, 0.02, STEPS, dtype=np.float64)
    ac = np.cumprod(1.0 - betas)
    ac_prev = np.append(1.0, ac[:-1])
    pv = betas * (1.0 - ac_prev) / (1.0 - ac)
    return {
        "sqrt_ac": np.sqrt(ac), "sqrt_1mac": np.sqrt(1.0 - ac),
        "recip": np.sqrt(1.0 / ac), "recipm1": np.sqrt(1.0 / ac - 1.0),
        "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "coef2": (1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac),
        "log_min": np.log(np.append(pv[1], pv[1:])),   # clipped posterior log var
        "log_max": np.log(betas),
    }


def _at(sched, key, t):
    """sched[key][t] for a (N,) long tensor t -> (N, 1, 1, 1) float32."""
    return torch.from_numpy(sched[key][t.numpy()]).float().view(-1, 1, 1, 1)


def _mean_flat(x):
    return x.flatten(1).mean(1)


def normal_kl(m1, lv1, m2, lv2):
    """KL(N(m1, e^lv1) || N(m2, e^lv2)) elementwise, in nats."""
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def _std_normal_cdf(x):
    """The tanh approximation of the standard normal CDF that upstream uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def decoder_log_likelihood(x, mean, log_scale):
    """log P(x) elementwise for x in [-1, 1] quantised to 256 levels under
    N(mean, e^(2 log_scale)); the two edge bins take the tails."""
    inv = torch.exp(-log_scale)
    c = x - mean
    cdf_plus = _std_normal_cdf(inv * (c + 1.0 / 255.0))
    cdf_min = _std_normal_cdf(inv * (c - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vb_terms(sched, x0, xt, t, eps_hat, v):
    """(N,) variational-bound term in bits/dim for the predicted eps_hat
    (treated as given) and variance channel v (N, C, H, W)."""
    true_mean = _at(sched, "coef1", t) * x0 + _at(sched, "coef2", t) * xt
    true_lv = _at(sched, "log_min", t)
    frac = (v + 1.0) / 2.0
    model_lv = frac * _at(sched, "log_max", t) + (1.0 - frac) * _at(sched, "log_min", t)
    x0_hat = _at(sched, "recip", t) * xt - _at(sched, "recipm1", t) * eps_hat
    model_mean = _at(sched, "coef1", t) * x0_hat + _at(sched, "coef2", t) * xt
    kl = _mean_flat(normal_kl(true_mean, true_lv, model_mean, model_lv)) / math.log(2.0)
    nll = -_mean_flat(decoder_log_likelihood(x0, model_mean, 0.5 * model_lv)) / math.log(2.0)
    return torch.where(t == 0, nll, kl)


def loss(model, sched, x0, y, gen, aux_alpha):
    """One batch of upstream's hybrid loss. x0 (N, C, H, W) in [-1, 1], y (N,)
    labels (already dropped to the null class where intended). Returns
    (loss, mse, vb, aux) with loss = mse + vb + aux as a scalar tensor."""
    n, c = x0.shape[0], x0.shape[1]
    t = torch.randint(0, STEPS, (n,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    xt = _at(sched, "sqrt_ac", t) * x0 + _at(sched, "sqrt_1mac", t) * eps
    out, aux = model(xt, t.float(), y, aux_alpha=aux_alpha, return_aux=True)
    eps_hat, v = out[:, :c], out[:, c:2 * c]
    mse = _mean_flat((eps - eps_hat) ** 2).mean()
    vb = vb_terms(sched, x0, xt, t, eps_hat.detach(), v).mean()
    return mse + vb + aux, mse, vb, aux
