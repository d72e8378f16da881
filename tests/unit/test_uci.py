"""The UCI reader (labwarden.declared.uci): sections, options, lists, quoting, and one
ConfigError naming file, line and problem for malformed input."""

import pytest

from labwarden.errors import ConfigError
from labwarden.declared.uci import parse_uci

FIREWALL = """\
package firewall

config defaults
	option input 'REJECT'
	option syn_flood	1

config zone 'lan'                 # a named section
	option name 'lan'
	list network 'lan'
	list network "iot"
	option input ACCEPT

config zone
	option name 'wan'
	list device 'wan0'

config rule
	option name 'Allow-DNS'
	list proto 'tcp'
	list proto 'udp'
	option dest_port '53 5353'
	option enabled '0'

config rule
	option name 'It'"'"'s quoted'
	option src 'wan'
	option name 'Last wins'
"""


def test_sections_named_and_anonymous():
    uci = parse_uci(FIREWALL, "firewall")
    assert [(s.type, s.label) for s in uci.sections] == [
        ("defaults", "@defaults[0]"), ("zone", "lan"), ("zone", "@zone[1]"), ("rule", "@rule[0]"),
        ("rule", "@rule[1]")]
    assert uci.named("lan").line == 7
    assert uci.where(uci.of_type("rule")[0]) == "firewall:17"


def test_options_lists_and_quoting():
    uci = parse_uci(FIREWALL, "firewall")
    defaults, lan, wan, dns, last = uci.sections
    assert defaults.get("syn_flood") == "1"          # a bare word after a tab
    assert lan.options["network"] == ["lan", "iot"]  # single and double quotes
    assert lan.get("input") == "ACCEPT"
    assert wan.values("device") == ["wan0"]
    assert dns.values("proto") == ["tcp", "udp"]
    assert dns.values("dest_port") == ["53", "5353"]  # an option's words, as fw4 reads them
    assert last.get("name") == "Last wins"          # a later option replaces, as uci does
    assert last.values("missing") == [] and last.get("missing", "x") == "x"


def test_enabled_zero_disables():
    uci = parse_uci(FIREWALL, "firewall")
    assert [s.enabled for s in uci.of_type("rule")] == [False, True]
    for off in ("0", "no", "off", "false"):
        assert not parse_uci(f"config rule\n\toption enabled '{off}'\n", "f").sections[0].enabled


def test_named_section_given_twice_is_merged():
    uci = parse_uci("config zone 'lan'\n\toption a '1'\nconfig zone 'lan'\n\toption b '2'\n", "f")
    assert len(uci.sections) == 1 and uci.sections[0].options == {"a": "1", "b": "2"}


@pytest.mark.parametrize("text, line, words", [
    ("config rule\n\toption name 'unclosed\n", 2, "no closing quotation"),
    ("option name 'x'\n", 1, "before any 'config' line"),
    ("config rule\n\toption name\n", 2, "takes a name and one value"),
    ("config rule\n\toption name 'a' 'b'\n", 2, "quote a value with spaces"),
    ("config rule\n\tlist proto 'tcp'\n\toption proto 'udp'\n", 3, "already a list"),
    ("config rule\n\toption proto 'udp'\n\tlist proto 'tcp'\n", 3, "already an option"),
    ("config\n", 1, "'config' takes a section type"),
    ("config rule 'a b'\n", 1, "is not a section type or name"),
    ("\n\nconfig rule\n\toptoin name 'x'\n", 4, "unknown keyword 'optoin'"),
    ("config zone 'x'\nconfig rule 'x'\n", 2, "already a zone"),
])
def test_malformed_input_is_one_clear_error(text, line, words):
    with pytest.raises(ConfigError) as err:
        parse_uci(text, "backup/etc/config/firewall")
    assert err.value.file == "backup/etc/config/firewall"
    assert err.value.field == f"line {line}"
    assert words in err.value.problem
