"""The calendar environment (NeMo Gym compatible), its grader and its seeded task generator."""

from sparring.envs.calendar.env import Calendar

__all__ = ["Calendar"]
