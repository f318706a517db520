"""support-desk: a τ-bench-like retail support desk (world, policy document, tasks, tools, verifier)."""

from sparring.envs.support_desk.env import SupportDesk, shipped_tasks, task_rows

__all__ = ["SupportDesk", "shipped_tasks", "task_rows"]
