"""Item 8 of issue 11 against the real API server and webhook: every LAN of the corpus
api/tests/bad-lans/*.yaml is refused, by the layer its annotation names (the CRD schema itself,
or the webhook), with an error naming its field; every LAN of api/tests/good-lans/*.yaml is
accepted; the cross-LAN rules (a spoke named like another LAN's underlay, the spokes a node may
carry) are refused by the webhook. Everything is a server-side dry run: nothing is stored."""
import json
import subprocess

from helpers import E2E_DIR, KUBECTL, Lan

CORPUS = E2E_DIR.parent / "api" / "tests"
WEBHOOK = 'admission webhook "lans.lan.k8slan.io" denied'


def corpus(kind, namespace):
    """(file name, object) of every document of the corpus, read by kubectl (no YAML library in
    the test venv)."""
    docs = []
    for path in sorted((CORPUS / kind).glob("*.yaml")):
        text = path.read_text().replace("$NAMESPACE", namespace)
        out = subprocess.run([str(KUBECTL), "create", "--dry-run=client", "--validate=false", "-o", "json",
                              "-f", "-"], input=text, capture_output=True, text=True, timeout=60, check=True)
        for d in json_stream(out.stdout):
            # kubectl's client dry run fills in the kubeconfig's namespace; the test's applies.
            d["metadata"].pop("namespace", None)
            docs.append((path.name, d))
    return docs


def json_stream(text):
    """The JSON objects kubectl prints one after another."""
    decoder, pos, objs = json.JSONDecoder(), 0, []
    while text[pos:].strip():
        obj, end = decoder.raw_decode(text, pos + len(text[pos:]) - len(text[pos:].lstrip()))
        objs.append(obj)
        pos = end
    return objs


def dry_run(kubectl, namespace, doc):
    """(refused, what kubectl printed) of a server-side dry run of one object."""
    proc = subprocess.run([str(KUBECTL), "-n", namespace, "apply", "--dry-run=server", "-f", "-"],
                          input=json.dumps(doc), capture_output=True, text=True, timeout=60)
    return proc.returncode != 0, proc.stdout + proc.stderr


def test_every_bad_lan_is_refused_by_its_layer_naming_its_field(k8slan, namespace):
    docs = corpus("bad-lans", namespace)
    assert len(docs) >= 100
    wrong = []
    for file, doc in docs:
        ann = doc["metadata"]["annotations"]
        want = ann.get("bad-lans.k8slan.io/says") or ann["bad-lans.k8slan.io/expect"]
        layer = ann["bad-lans.k8slan.io/layer"]
        refused, msg = dry_run(k8slan, namespace, doc)
        what = f"{file}: {doc['metadata']['name'][:40]}"
        if not refused:
            wrong.append(f"{what}: accepted")
        elif want not in msg:
            wrong.append(f"{what}: refused without naming {want}: {msg.strip()[:300]}")
        elif layer == "schema" and WEBHOOK in msg:
            wrong.append(f"{what}: refused by the webhook, but the schema must refuse it: {msg.strip()[:300]}")
        elif layer == "webhook" and WEBHOOK not in msg:
            wrong.append(f"{what}: not refused by the webhook: {msg.strip()[:300]}")
    print(f"\nbad LANs: {len(docs)} refused by the API server and webhook, {len(wrong)} wrong")
    assert not wrong, "\n".join(wrong)


def test_every_good_lan_is_accepted(k8slan, namespace):
    docs = corpus("good-lans", namespace)
    assert len(docs) >= 10
    refused = [(d["metadata"]["name"], m) for _, d in docs for r, m in [dry_run(k8slan, namespace, d)] if r]
    assert not refused, refused


def test_spokes_and_underlays_of_other_lans_and_the_node_limit(k8slan, namespace):
    kubectl = k8slan
    a = Lan(roles=("a",))
    dev = f"ul{a.tag}"[:15]
    kubectl.apply(a.manifest(vxlanDevMap={"worker2": dev}), namespace=namespace)
    try:
        # A spoke of another LAN named like a's underlay on worker2.
        b = Lan(roles=("x",))
        refused, msg = dry_run(kubectl, namespace, b.manifest(spokes=[dev]))
        assert refused and WEBHOOK in msg, msg
        assert f'spoke "{dev}" is an underlay device of LAN {namespace}/{a.name}' in msg, msg
        # An underlay named like a's spoke.
        refused, msg = dry_run(kubectl, namespace, b.manifest(dev=a.spokes["a"]))
        assert refused and f'underlay "{a.spokes["a"]}" is a spoke of LAN {namespace}/{a.name}' in msg, msg
        # 1001 spokes on every node: past controller.maxSpokesPerNode (1000 by default).
        many = Lan(roles=())
        spokes = [f"{many.tag}n{i}" for i in range(1001)]
        refused, msg = dry_run(kubectl, namespace, many.manifest(spokes=spokes))
        assert refused and WEBHOOK in msg, msg[:500]
        assert "more than the limit of 1000 (chart value controller.maxSpokesPerNode" in msg, msg[:500]
    finally:
        kubectl("-n", namespace, "delete", "lan", a.name, "--wait=true", check=False)
