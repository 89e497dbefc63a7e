"""Alerts: email through an SMTP connection and Slack through a webhook connection.

Messages name the provider, the run, the failed task, the error category and link to the run,
so whoever is on call can act without opening three screens. Secrets never go into them:
Airflow masks connection passwords, and exception text from the engine never carries them.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from mls_sync.config import ProviderConfig
from mls_sync.failures import category_of

from mls_sync_airflow.links import dag_url, run_url

log = logging.getLogger(__name__)


def compose(cfg: ProviderConfig, *, event: str, context: dict[str, Any] | None = None,
            detail: str | None = None, category: str | None = None, task: str | None = None) -> tuple[str, str]:
    """(subject, text) for an alert."""
    context = context or {}
    run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(run, "dag_id", None) or cfg.dag_id()
    run_id = getattr(run, "run_id", None) or context.get("run_id")
    task_id = task or getattr(ti, "task_id", None)
    exc = context.get("exception")
    category = category or (category_of(exc) if exc is not None else "unknown")
    subject = f"[MLS sync] {cfg.name} ({cfg.provider_id}): {event}"
    lines = [
        f"Provider: {cfg.name} ({cfg.provider_id}, {cfg.protocol.upper()})",
        f"Event: {event}",
        f"DAG: {dag_id}",
        f"Run: {run_id or '-'}",
        f"Task: {task_id or '-'}",
        f"Error category: {category}",
    ]
    if exc is not None:
        lines.append(f"Error: {type(exc).__name__}: {str(exc)[:500]}")
    if detail:
        lines.append(f"Detail: {detail}")
    lines.append(f"Link: {run_url(dag_id, run_id, absolute=True) or dag_url(dag_id, absolute=True)}")
    return subject, "\n".join(lines)


def send(cfg: ProviderConfig, subject: str, text: str, context: dict[str, Any] | None = None) -> list[str]:
    """Send through every channel the YAML configures; a broken channel never hides another."""
    sent: list[str] = []
    # notify() (not the notifier's __call__) renders no template, so MLS text in the message cannot
    # reach Jinja; only a sender taken from the connection is rendered, in a plain environment
    # (the "dag" of a DAG callback may be a serialized one without a template environment)
    ctx = {k: v for k, v in (context or {}).items() if k != "dag"}
    if cfg.alerts.email:
        try:
            from airflow.providers.smtp.notifications.smtp import SmtpNotifier

            body = "<pre>" + html.escape(text) + "</pre>"
            # the sender: the YAML's alerts.email_from, else the SMTP connection's from_email
            # (relays refuse made-up senders, so there is no default of our own)
            SmtpNotifier(to=list(cfg.alerts.email), subject=subject, html_content=body,
                         from_email=cfg.alerts.email_from,
                         smtp_conn_id=cfg.alerts.smtp_connection_id or "smtp_default").notify(ctx)
            sent.append("email")
        except Exception:
            log.exception("email alert for %s failed (the sender is alerts.email_from in the YAML or from_email "
                          "in the SMTP connection's extras)", cfg.provider_id)
    if cfg.alerts.slack_connection_id:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(slack_webhook_conn_id=cfg.alerts.slack_connection_id,
                                 text=f"*{subject}*\n{text}").notify(ctx)
            sent.append("slack")
        except Exception:
            log.exception("slack alert for %s failed", cfg.provider_id)
    return sent


def alert(cfg: ProviderConfig, event: str, context: dict[str, Any] | None = None, *, detail: str | None = None,
          category: str | None = None, task: str | None = None) -> list[str]:
    subject, text = compose(cfg, event=event, context=context, detail=detail, category=category, task=task)
    log.warning("alert: %s", subject)
    return send(cfg, subject, text, context)


def task_failed(context: dict[str, Any]) -> None:
    """on_failure_callback: runs after the task's last retry."""
    from mls_sync_airflow.tasks import provider, provider_id_of

    dag_id = getattr(context.get("dag_run"), "dag_id", "") or ""
    alert(provider(provider_id_of(dag_id)), "sync task failed", context)
