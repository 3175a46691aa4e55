"""S3 storage through boto3: where a repository's bucket is, and making sure it exists."""
