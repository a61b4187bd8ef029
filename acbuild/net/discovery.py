"""appc meta discovery (spec digest §4; appc/spec discovery/ v0.8.11, which Debian's
`actool discover` runs): from an image name and labels to the URLs of the image,
its signature and the public keys that sign it.

    from acbuild.net.discovery import AppRequest, DiscoveryOptions, discover, discover_keys

    app = AppRequest.parse("example.com/app:1.0,channel=beta")   # UsageError if malformed
    found = discover(app, DiscoveryOptions(port=8443, http=HttpOptions(ca_file=ca)))
    found.endpoints    # (Endpoint(aci=..., asc=...), ...) in page order; () if none
    found.keys         # ("https://example.com/pubkeys.gpg", ...); () if none
    found.attempts     # (Attempt(url, error), ...): every page that did not answer
    found.require_endpoints()   # the endpoints, or NotFoundError naming what was tried
    discover_keys("example.com/app", options)   # the key walk alone (trust --prefix)

The walk, as actool does it: for the full name, then each parent path
(`a.com/b/c`, `a.com/b`, `a.com`), GET `https://PREFIX?ac-discovery=1` (`port` goes
after the host). Only a 200 page counts. With `insecure` the HTTPS request does not
check certificates and, if it fails or is not 200, `http://` is tried on the same
port. In each page, `<meta name="ac-discovery" content="PREFIX TEMPLATE">` tags whose
PREFIX the name starts with (a plain string prefix, as actool) give image
templates; `ac-discovery-pubkeys` tags give key URLs. `{name}` and every
`{label}` (version defaults to `latest`) are replaced literally; `{ext}` becomes `aci` and `aci.asc`;
a template with any `{...}` left is skipped. `AppRequest.with_host_defaults()`
gives os and arch the host's values where the request has none. The image walk stops at the first
prefix with a template, the key walk (separately) at the first with a key.

Each page is fetched once per `discover` call even though both walks read it, and
at most PAGE_LIMIT bytes of it are read. Nothing here downloads images or keys.
"""

from __future__ import annotations

import functools
import re

from acbuild.aci.types import acidentifier_problem, host_os_arch
from acbuild.errors import NotFoundError, UsageError
from acbuild.net.http import HttpOptions, NetError, open_url
from acbuild.records import dataclass, field

PAGE_LIMIT = 1 << 20  # a discovery page is a few hundred bytes; refuse to read a huge one
DEFAULT_VERSION = "latest"
_LEFTOVER = re.compile(r"\{.*?\}")  # actool's templateExpression


@dataclass(frozen=True)
class AppRequest:
    """What is asked for: an image name and the labels it must carry."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()  # sorted (label, value) pairs

    @classmethod
    def parse(cls, text: str) -> AppRequest:
        """`NAME[:VERSION][,LABEL=VALUE...]`, as actool reads it (NewAppFromString).
        Whatever actool refuses (or panics on) is a UsageError naming the argument."""

        def bad(why: str) -> UsageError:
            return UsageError(f"{text!r}: {why} (expected NAME[:VERSION][,LABEL=VALUE...])")

        comma, colon = text.find(","), text.find(":")
        if text.count(":") > 1:
            raise bad("a colon may appear at most once")
        if comma > -1 and colon > comma:
            raise bad("a colon may appear only right after the name")
        name_part, _, rest = text.partition(",")
        name, has_version, version = name_part.partition(":")
        labels: dict[str, str] = {}
        pairs = ([f"version={version}"] if has_version else []) + (rest.split(",") if comma > -1 else [])
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq:
                raise bad(f"label {key!r} has no value")
            if key in labels or key == "name":
                raise bad(f"label {key!r} given twice" if key in labels else "'name' is not a label")
            problem = acidentifier_problem(key)
            if problem:
                raise bad(f"label {key!r}: {problem}")
            labels[key] = value
        return cls.make(name, labels, bad)

    @classmethod
    def make(cls, name: str, labels: dict[str, str] | None = None, bad=None) -> AppRequest:
        problem = acidentifier_problem(name, strict=True)
        if problem:
            raise (bad or (lambda why: UsageError(f"image name {name!r}: {why}")))(problem)
        return cls(name, tuple(sorted((labels or {}).items())))

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def with_host_defaults(self) -> AppRequest:
        """The request with os and arch set to the host's where it gives none (as
        actool discover and rkt fetch do)."""
        merged = dict(self.labels)
        for key, value in zip(("os", "arch"), host_os_arch()):
            merged[key] = merged.get(key) or value  # an empty os= is filled in too, as actool does
        return AppRequest(self.name, tuple(sorted(merged.items())))

    def __str__(self) -> str:
        return ",".join([self.name] + [f"{k}={v}" for k, v in self.labels])


@dataclass(frozen=True)
class DiscoveryOptions:
    """The discovery option group: --insecure, --port, --ca-file (and the timeout)."""

    http: HttpOptions = HttpOptions()
    port: int | None = None

    @property
    def insecure(self) -> bool:
        return self.http.insecure


@dataclass(frozen=True)
class Endpoint:
    aci: str
    asc: str


@dataclass(frozen=True)
class Attempt:
    """A discovery page that gave nothing: the URL asked and why."""

    url: str
    error: str


@dataclass(frozen=True)
class Discovery:
    app: AppRequest
    endpoints: tuple[Endpoint, ...] = ()
    keys: tuple[str, ...] = ()
    attempts: tuple[Attempt, ...] = ()

    def require_endpoints(self) -> tuple[Endpoint, ...]:
        if not self.endpoints:
            raise NotFoundError(failure_message(f"no image found for {self.app}", self.attempts))
        return self.endpoints

    def require_keys(self) -> tuple[str, ...]:
        if not self.keys:
            raise NotFoundError(failure_message(f"no public keys found for {self.app.name}", self.attempts))
        return self.keys

    def as_json(self) -> dict:
        """actool's --json shape, plus the attempts."""
        return {"ACIEndpoints": [{"ACI": e.aci, "ASC": e.asc} for e in self.endpoints],
                "PublicKeys": list(self.keys),
                "Attempts": [{"URL": a.url, "Error": a.error} for a in self.attempts]}


def failure_message(headline: str, attempts: tuple[Attempt, ...]) -> str:
    tried = "".join(f"\n  {a.url}: {a.error}" for a in attempts)
    return f"{headline}: discovery failed{tried}" if tried else f"{headline}: discovery failed"


def discover(app: AppRequest, options: DiscoveryOptions = DiscoveryOptions()) -> Discovery:
    """Both walks (image templates, public keys) for `app`. Never raises for a page
    that fails: that is an attempt in the result (see require_endpoints)."""
    walk = _Walk(app, options)
    return Discovery(app, walk.endpoints(), walk.keys(), tuple(walk.failed))


def discover_keys(prefix: str, options: DiscoveryOptions = DiscoveryOptions()) -> Discovery:
    """The key walk alone, for a name prefix (`acbuild trust --prefix`)."""
    walk = _Walk(AppRequest.make(prefix), options)
    return Discovery(walk.app, (), walk.keys(), tuple(walk.failed))


@dataclass(frozen=True)
class MetaTag:
    name: str  # ac-discovery or ac-discovery-pubkeys
    prefix: str
    template: str


@dataclass
class _Walk:
    app: AppRequest
    options: DiscoveryOptions
    pages: dict[str, list[MetaTag] | None] = field(default_factory=dict)  # prefix -> tags (None: failed)
    failed: list[Attempt] = field(default_factory=list)

    def prefixes(self) -> list[str]:
        parts = self.app.name.split("/")
        return ["/".join(parts[:end]) for end in range(len(parts), 0, -1)]

    def endpoints(self) -> tuple[Endpoint, ...]:
        for prefix in self.prefixes():
            found = [e for tag in self.tags(prefix, "ac-discovery") if (e := self.render(tag.template))]
            if found:
                return tuple(found)
        return ()

    def keys(self) -> tuple[str, ...]:
        for prefix in self.prefixes():
            found = [tag.template for tag in self.tags(prefix, "ac-discovery-pubkeys")]
            if found:
                return tuple(found)
        return ()

    def tags(self, prefix: str, kind: str) -> list[MetaTag]:
        if prefix not in self.pages:
            self.pages[prefix] = self.fetch(prefix)
        return [t for t in self.pages[prefix] or [] if t.name == kind and self.app.name.startswith(t.prefix)]

    def fetch(self, prefix: str) -> list[MetaTag] | None:
        errors = []
        for scheme in ["https", "http"] if self.options.insecure else ["https"]:
            url = page_url(scheme, prefix, self.options.port)
            try:
                with open_url(url, self.options.http, limit=PAGE_LIMIT) as resp:
                    if resp.status == 200:  # only 200 counts, as in actool
                        return parse_meta(resp.read().decode("utf-8", "replace"))
                    errors.append(Attempt(url, f"expected a 200 OK, got {resp.status}"))
            except NetError as e:
                errors.append(Attempt(url, e.detail if e.url == url else str(e)))
        self.failed.extend(errors)
        return None

    def render(self, template: str) -> Endpoint | None:
        labels = dict(self.app.labels)
        labels["version"] = labels.get("version") or DEFAULT_VERSION
        # {name} first, so a label called "name" never applies (as in actool).
        for key, value in [("name", self.app.name), *labels.items()]:
            template = template.replace("{" + key + "}", value)
        aci, asc = template.replace("{ext}", "aci"), template.replace("{ext}", "aci.asc")
        if _LEFTOVER.search(aci) or _LEFTOVER.search(asc):
            return None
        return Endpoint(aci, asc)


def page_url(scheme: str, prefix: str, port: int | None) -> str:
    host, slash, path = prefix.partition("/")
    return f"{scheme}://{host}{f':{port}' if port else ''}{slash}{path}?ac-discovery=1"


def parse_meta(html: str) -> list[MetaTag]:
    """The `ac-*` meta tags of a page, in page order (actool's extractACMeta)."""
    parser = _meta_parser_class()()
    parser.feed(html)
    parser.close()
    return parser.tags


@functools.cache
def _meta_parser_class():
    from html.parser import HTMLParser  # here: 3 ms that a command sending no request need not pay

    class MetaParser(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tags: list[MetaTag] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag != "meta":
                return
            values = {key: value or "" for key, value in attrs}  # the last of a repeated attribute wins
            name, content = values.get("name", ""), values.get("content", "").strip()
            prefix, space, template = content.partition(" ")
            if name.startswith("ac-") and prefix and space and template.strip():
                self.tags.append(MetaTag(name, prefix, template.strip()))

    return MetaParser

