"""Is the old task's forgetting in fmnist-seq a matter of batch norm statistics? Evaluates the
old task (classes 0-4) of the sequential run as trained, with the old network's statistics
copied in, and with statistics re-estimated on the old test images (an oracle no sequential
learner has). Run after reproduce.sh lane b:  python results/cpu-xeon-2core/seq_bn_check.py [RUNS]
"""
import copy, sys
import torch, dvn
from dvn.data import task, loader
torch.set_num_threads(2)
R = sys.argv[1] if len(sys.argv) > 1 else "runs/small"
teacher = dvn.load(f"{R}/seq-old/checkpoint.pt").eval()
student = dvn.load(f"{R}/seq/checkpoint.pt").eval()
test = task("fmnist-0-4", "test")
batches = list(loader(test, batch_size=500, train=False, size=28, channels=1))

def acc(model, level, train_bn=False):
    model.eval()
    if train_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train(); m.momentum = None; m.reset_running_stats()
    hit = n = 0
    with torch.no_grad():
        for x, y in batches:
            hit += (model(x, task=1, level=level).argmax(1) == y).sum().item(); n += len(y)
    model.eval()
    return 100 * hit / n

print("teacher t1 l2", acc(teacher, 2))
for l in (1, 2):
    print("student t1 level", l, "as trained", acc(student, l))
s2 = copy.deepcopy(student)
# copy teacher's BN running stats of task 1 (all levels) into the student
tsd = teacher.state_dict()
sd = s2.state_dict()
n = 0
for k in sd:
    if ("running_mean" in k or "running_var" in k) and "t1_" in k:
        sd[k] = tsd[k].clone(); n += 1
s2.load_state_dict(sd)
print("copied", n, "stat tensors")
for l in (1, 2):
    print("student t1 level", l, "teacher BN stats", acc(s2, l))
for l in (1, 2):
    s3 = copy.deepcopy(student)
    print("student t1 level", l, "stats re-estimated on old test data (oracle)", acc(s3, l, train_bn=True))
