"""drkit: back up with restic to S3, prove the backups restore, keep the evidence."""

__version__ = "0.1.0"
