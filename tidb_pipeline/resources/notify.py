"""Notifications to people: one message shape, four destinations (Slack, Microsoft Teams, email, a webhook).

Slack and Teams go through Dagster's own integrations (`dagster_slack.SlackResource`,
`dagster_msteams.MSTeamsResource`); email is SMTP (`smtplib`) and the webhook a JSON POST (`httpx`), each a
small `ConfigurableResource`. Every secret (bot token, webhook URLs, SMTP password) is a `dg.EnvVar`
resolved only where the message is sent, and every message passes through `redact` first: texts copied from
Dagster (a run's error, a check's metadata) could carry a credential, and no message may.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal, Protocol

import dagster as dg
import httpx
from dagster_msteams import MSTeamsResource
from dagster_msteams.adaptive_card import AdaptiveCard
from dagster_slack import SlackResource
from pydantic import Field

Status = Literal["firing", "resolved"]
Severity = Literal["warning", "error", "ok"]

# Environment variables whose values never appear in a message, whatever the text they hide in.
_SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE_KEY|API_KEY|WEBHOOK|CREDENTIAL)", re.IGNORECASE)
_MIN_SECRET_LEN = 4
REDACTED = "[redacted]"


def secret_values(env: Mapping[str, str] | None = None, names: Iterable[str] = ()) -> list[str]:
    """Values of the secret-looking variables in `env` plus those `names` (longest first)."""
    env = os.environ if env is None else env
    wanted = {n for n in env if _SECRET_NAME.search(n)} | {n for n in names if n in env}
    values = {env[n] for n in wanted if len(env[n] or "") >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for value in secrets:
        text = text.replace(value, REDACTED)
    # Credentials in URLs (`scheme://user:password@host`) even when not from a known variable.
    return re.sub(r"(\w+://[^/\s:@]+):[^/\s@]+@", rf"\1:{REDACTED}@", text)


@dataclass(frozen=True)
class Notification:
    """One state change of one thing (a check, a job's runs, the changefeed, a replica's freshness)."""

    subject: str  # what changed state, stable across ticks: "check snowflake/REPLICA/ORDERS:row_count_matches_source"
    status: Status
    severity: Severity
    title: str  # one line naming the table and the check, e.g. "ERROR row_count_matches_source on tpcc.orders"
    facts: tuple[tuple[str, str], ...] = ()  # the numbers, as (name, value)
    link: str = ""  # the asset or run in the Dagster UI
    at: str = ""  # ISO time of the change

    def text(self) -> str:
        lines = [self.title, *(f"{k}: {v}" for k, v in self.facts)]
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "status": self.status, "severity": self.severity, "title": self.title,
                "facts": dict(self.facts), "link": self.link, "at": self.at}

    def redacted(self, secrets: Iterable[str]) -> Notification:
        secrets = list(secrets)
        return Notification(
            subject=redact(self.subject, secrets), status=self.status, severity=self.severity,
            title=redact(self.title, secrets), facts=tuple((k, redact(v, secrets)) for k, v in self.facts),
            link=redact(self.link, secrets), at=self.at,
        )

    def to_dict(self) -> dict[str, Any]:
        """For the sensor cursor (undelivered messages are kept there)."""
        return {**self.as_json(), "facts": [list(f) for f in self.facts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        return cls(subject=data["subject"], status=data["status"], severity=data["severity"], title=data["title"],
                   facts=tuple((str(k), str(v)) for k, v in data.get("facts", [])), link=data.get("link", ""),
                   at=data.get("at", ""))


class Sender(Protocol):
    def send(self, notification: Notification) -> None: ...


_ICON = {("firing", "error"): ":red_circle:", ("firing", "warning"): ":large_yellow_circle:",
         ("resolved", "ok"): ":large_green_circle:"}


@dataclass(frozen=True)
class SlackSender:
    """Posts with `chat.postMessage` through dagster-slack's `WebClient`."""

    slack: SlackResource
    channel: str
    api_url: str = "https://slack.com/api/"

    def send(self, notification: Notification) -> None:
        client = self.slack.get_client()
        client.base_url = self.api_url if self.api_url.endswith("/") else self.api_url + "/"
        icon = _ICON.get((notification.status, notification.severity), ":information_source:")
        facts = "\n".join(f"• {k}: `{v}`" for k, v in notification.facts)
        link = f"\n<{notification.link}|Open in Dagster>" if notification.link else ""
        # slack_sdk raises SlackApiError when Slack answers ok=false.
        client.chat_postMessage(channel=self.channel, text=f"{icon} *{notification.title}*\n{facts}{link}".strip())


@dataclass(frozen=True)
class TeamsSender:
    """Posts an Adaptive Card through dagster-msteams' `TeamsClient` (incoming webhook or Workflows URL)."""

    teams: MSTeamsResource

    def send(self, notification: Notification) -> None:
        card = AdaptiveCard()
        card.add_attachment(text_message=f"**{notification.title}**")
        for k, v in notification.facts:
            card.add_attachment(text_message=f"{k}: {v}")
        if notification.link:
            card.add_attachment(text_message=f"[Open in Dagster]({notification.link})")
        self.teams.get_client().post_message(payload=card.payload)


class SmtpResource(dg.ConfigurableResource):
    """An SMTP account that sends alert emails; the password from the environment (`dg.EnvVar`)."""

    host: str
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    sender: str
    recipients: list[str]
    username: str | None = None
    password: str | None = Field(default=None, description="from the variable named by alerts.email.password_env")
    timeout_s: float = 30.0

    def send(self, notification: Notification) -> None:
        message = EmailMessage()
        prefix = "RESOLVED" if notification.status == "resolved" else notification.severity.upper()
        message["Subject"] = f"[tidb_pipeline {prefix}] {notification.title}"[:250]
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(notification.text() + "\n")
        context = ssl.create_default_context()
        if self.security == "ssl":
            server: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s, context=context)
        else:
            server = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with server:
            if self.security == "starttls":
                server.starttls(context=context)
            if self.username:
                server.login(self.username, self.password or "")
            server.send_message(message)


class WebhookResource(dg.ConfigurableResource):
    """A URL that receives each notification as a JSON POST; the URL itself from the environment."""

    url: str = Field(description="from the variable named by alerts.webhook.url_env")
    timeout_s: float = 10.0

    def send(self, notification: Notification) -> None:
        response = httpx.post(self.url, content=json.dumps(notification.as_json()),
                              headers={"Content-Type": "application/json"}, timeout=self.timeout_s)
        if response.status_code >= 300:
            # The URL is a secret: name the status only.
            raise RuntimeError(f"the alert webhook answered HTTP {response.status_code}")
