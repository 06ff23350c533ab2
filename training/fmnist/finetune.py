"""Second stage: fine-tune the trained CNN on batches that mix Fashion-MNIST
with real photos converted by the daemon (`tagd convert`).

Every step draws `n_fmnist` Fashion-MNIST images (Bag drawn `bag_boost` times
as often as the other classes) and `n_real` real photos (each label cell
equally often). The loss is the Fashion-MNIST half's mean cross-entropy plus
`real_weight` times the real half's mean set-valued loss: the Fashion-MNIST
term keeps its full weight however many real photos join the batch, so the
classes the real photos never show (Bag above all) are not traded away.

The Fashion-MNIST images get the first stage's augmentation and, for a
share of them, the photo-like defects of `photoaug.photo_like`; the real
photos get only light augmentation (they carry the real defects already).

With `n_real = 0` the same loop is the Fashion-MNIST-only control: same
steps, same Fashion-MNIST images and augmentation, no real photos.

The weights kept are those of the evaluation point with the best score,
(Fashion-MNIST validation accuracy + real dev accuracy) / 2, or the
validation accuracy alone when there are no real photos, among the points
that still call the photo-like validation bags Bag (see `photo_bags`). The
evaluation photos of the project are never seen here.
"""

import copy
import time

import torch

from fmnist import photoaug, real
from fmnist.augment import augment
from fmnist.model import normalise

BAG = 8
FOOTWEAR = (5, 7, 9)


def photo_bags(x_val, y_val, seed=123):
    """The validation bags with photo-like defects, drawn once with a fixed
    seed: the stand-in for a photographed bag, which the real photos never
    show. A net that learns "looks like a photo, so not a bag" fails here."""
    bags = x_val[y_val == BAG]
    return photoaug.photo_like(bags, torch.Generator().manual_seed(seed), p=1.0)


@torch.no_grad()
def _logits(model, x, bs=1000):
    model.eval()
    return torch.cat([model(normalise(x[i:i + bs])) for i in range(0, len(x), bs)])


def evaluate(model, x_val, y_val, real_dev, x_photo_bags=None):
    """Fashion-MNIST validation accuracy and Bag recall, Bag recall on the
    photo-like validation bags; on the real dev split, set accuracy and the
    share of footwear photos called Bag."""
    out = {}
    pv = _logits(model, x_val).argmax(1)
    out["val_acc"] = float((pv == y_val).float().mean())
    bags = y_val == BAG
    out["val_bag_recall"] = float((pv[bags] == BAG).float().mean()) if bags.any() else None
    if x_photo_bags is not None and len(x_photo_bags):
        out["photo_bag_recall"] = float((_logits(model, x_photo_bags).argmax(1) == BAG).float().mean())
    if real_dev is not None:
        pr = _logits(model, real_dev["x"]).argmax(1)
        ok = real.set_correct(pr, real_dev["accept"])
        out["dev_acc"] = float(ok.float().mean())
        foot = real_dev["accept"][:, list(FOOTWEAR)].any(1) & ~real_dev["accept"][:, BAG]
        out["dev_footwear_as_bag"] = float((pr[foot] == BAG).float().mean()) if foot.any() else None
        out["dev_pred_bag"] = float((pr == BAG).float().mean())
    return out


def within_guard(val_acc, start_acc, fmnist_guard, n_val):
    """Whether a step's Fashion-MNIST validation accuracy fell at most
    `fmnist_guard` below the start. Accuracies are whole images out of
    `n_val`, measured as float32 means: half an image of slack keeps a step
    that sits exactly on the floor from falling under it by rounding (it
    did: 0.9460 against 0.9500 - 0.004)."""
    return val_acc >= start_acc - fmnist_guard - 0.5 / n_val


def score(ev):
    return (ev["val_acc"] + ev["dev_acc"]) / 2 if "dev_acc" in ev else ev["val_acc"]


def finetune(model, x_tr, y_tr, x_val, y_val, real_train, real_dev, *, steps, n_fmnist, n_real, lr,
             weight_decay, smoothing, bag_boost, real_weight, photo_p, eval_every, use_bf16, use_cl, gen,
             distill=0.0, ema_decay=0.0, bag_guard=0.03, fmnist_guard=1.0, fmnist_strength=1.0,
             name="finetune", log=None, log_line=None):
    """Fine-tunes a copy of `model`; returns (model in eval mode, info).

    x_* are pixel tensors [N, 1, 28, 28] in [0, 1]; real_train and real_dev
    are dicts {x, accept (bool [N, 10]), cells} or None. An evaluation point
    can only be kept if its Bag recall on the photo-like validation bags is
    at most `bag_guard` below the starting net's, and its Fashion-MNIST
    validation accuracy at most `fmnist_guard` below the starting net's: the
    real photos may cost the benchmark a little, not a point.
    """
    xpb = photo_bags(x_val, y_val)
    teacher = copy.deepcopy(model).eval() if distill else None
    model = copy.deepcopy(model)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    # The weights evaluated and kept: an exponential moving average of the
    # trained ones (BatchNorm statistics included) when ema_decay > 0.
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay),
        use_buffers=True) if ema_decay else None
    kept = (lambda: ema.module) if ema is not None else (lambda: model)
    if real_train is None:
        n_real = 0
    draws = real.MixedBatches(y_tr.numpy(), real_train["cells"] if n_real else [], n_fmnist, n_real, gen,
                              bag_boost=bag_boost)
    eye = torch.eye(10, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    ev0 = evaluate(model, x_val, y_val, real_dev, xpb)
    guard = (ev0["photo_bag_recall"] - bag_guard) if "photo_bag_recall" in ev0 else None
    best = {"score": score(ev0), "step": 0, "state": copy.deepcopy(model.state_dict()), "eval": ev0}
    history = [{"model": name, "step": 0, **{k: round(v, 5) for k, v in ev0.items() if v is not None}}]
    if log_line:
        log_line(log, **history[-1])
    t0 = time.time()
    c0 = time.process_time()
    run_f = run_r = 0.0
    seen_real = 0
    for step in range(1, steps + 1):
        model.train()
        fi, ri = draws.draw()
        xf = photoaug.photo_like(augment(x_tr[fi], gen, fmnist_strength), gen, p=photo_p)
        accept = eye[y_tr[fi]]
        n_f = len(fi)
        if len(ri):
            xr = photoaug.light(real_train["x"][ri], gen)
            xb = torch.cat([xf, xr])
            accept = torch.cat([accept, real_train["accept"][ri]])
            seen_real += len(ri)
        else:
            xb = xf
        xb = normalise(xb)
        if use_cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            out = model(xb)
        per = real.set_nll(out.float(), accept, smoothing)
        loss_f = per[:n_f].mean()
        if teacher is not None:
            # Keep the first stage's answers on Fashion-MNIST: KL(teacher || student).
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                t_logits = teacher(xb[:n_f])
            loss_f = loss_f + distill * torch.nn.functional.kl_div(
                torch.log_softmax(out[:n_f].float(), 1), torch.log_softmax(t_logits.float(), 1),
                log_target=True, reduction="batchmean")
        loss = loss_f
        if len(ri):
            loss_r = per[n_f:].mean()
            loss = loss + real_weight * loss_r
            run_r = 0.98 * run_r + 0.02 * float(loss_r.detach())
        run_f = 0.98 * run_f + 0.02 * float(loss_f.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        if step % eval_every == 0 or step == steps:
            ev = evaluate(kept(), x_val, y_val, real_dev, xpb)
            rec = {"model": name, "step": step, "loss_fmnist": round(run_f, 4), "loss_real": round(run_r, 4),
                   **{k: round(v, 5) for k, v in ev.items() if v is not None},
                   "lr": opt.param_groups[0]["lr"], "wall_s": round(time.time() - t0, 1),
                   "cpu_s": round(time.process_time() - c0, 1)}
            history.append(rec)
            if log_line:
                log_line(log, **rec)
            guarded = ((guard is None or ev["photo_bag_recall"] >= guard)
                       and within_guard(ev["val_acc"], ev0["val_acc"], fmnist_guard, len(y_val)))
            if score(ev) > best["score"] and guarded:
                best = {"score": score(ev), "step": step, "state": copy.deepcopy(kept().state_dict()), "eval": ev}
    model.load_state_dict(best["state"])
    model = model.to(memory_format=torch.contiguous_format).eval()
    real_train_n = len(real_train["x"]) if (real_train is not None and n_real) else 0
    info = {"history": history, "best_step": best["step"], "best_eval": best["eval"], "start_eval": ev0,
            "steps": steps, "wall_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "real_passes": round(seen_real / real_train_n, 1) if real_train_n else 0.0,
            "fmnist_epochs": round(steps * n_fmnist / len(x_tr), 2)}
    return model, info
