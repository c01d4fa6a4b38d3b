"""The paper's two-device split (Section 3.2): ``placement`` (``model=paper_dual_gpu`` is
``paper_grouped`` placed one tower per device), ``towers`` (plain PyTorch and
torch.distributed), ``strategy`` (its Lightning strategy), and ``ranks`` (where
a process stands among the data-parallel copies)."""
