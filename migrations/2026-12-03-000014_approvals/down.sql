DROP INDEX IF EXISTS audit_log_approval_refused_idx;
DROP TABLE approvals;
