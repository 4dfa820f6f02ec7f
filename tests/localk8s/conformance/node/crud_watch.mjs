// @kubernetes/client-node CRUD + watch on ConfigMaps against the cluster of $KUBECONFIG.
//
//   cd tests/localk8s/conformance/node && npm ci && KUBECONFIG=... node crud_watch.mjs
//
// Uses the namespace $CONFORMANCE_NAMESPACE if set (the Go suite creates and deletes it),
// otherwise creates conf-node-<random> and deletes it at the end. Exits non-zero on any failure.
import * as k8s from '@kubernetes/client-node';

const TIMEOUT_MS = 60000;
const kc = new k8s.KubeConfig();
kc.loadFromDefault();
const core = kc.makeApiClient(k8s.CoreV1Api);
const log = (...a) => console.log('[node-client]', ...a);

function fail(msg) {
  console.error('[node-client] FAIL:', msg);
  process.exit(1);
}

function waitFor(pred, what) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const tick = () => {
      if (pred()) return resolve();
      if (Date.now() - start > TIMEOUT_MS) return reject(new Error('timeout waiting for ' + what));
      setTimeout(tick, 50);
    };
    tick();
  });
}

async function main() {
  let ns = process.env.CONFORMANCE_NAMESPACE;
  let ownNs = false;
  if (!ns) {
    ns = 'conf-node-' + Math.random().toString(36).slice(2, 8);
    await core.createNamespace({ body: { metadata: { name: ns } } });
    ownNs = true;
  }
  const name = 'node-client-cm';
  const sel = 'conformance=node-client';
  try {
    log('client-node version', (await import('@kubernetes/client-node/package.json', { with: { type: 'json' } }).catch(() => ({ default: {} }))).default.version || '?', 'namespace', ns);

    // Watch first (from the list's resourceVersion, as informers do).
    const initial = await core.listNamespacedConfigMap({ namespace: ns, labelSelector: sel });
    const events = [];
    const watch = new k8s.Watch(kc);
    let watchErr = null;
    const ctl = await watch.watch(
      `/api/v1/namespaces/${ns}/configmaps`,
      { labelSelector: sel, resourceVersion: initial.metadata.resourceVersion, allowWatchBookmarks: true },
      (type, obj) => {
        if (type === 'BOOKMARK') return;
        events.push(`${type}:${obj.metadata.name}:${(obj.data || {}).k || ''}`);
      },
      (err) => { if (err && err.name !== 'AbortError') watchErr = err; },
    );

    // Create
    const created = await core.createNamespacedConfigMap({
      namespace: ns,
      body: { metadata: { name, labels: { conformance: 'node-client' } }, data: { k: 'v1' } },
    });
    if (created.data.k !== 'v1') fail('create returned ' + JSON.stringify(created.data));
    log('created', name, 'uid', created.metadata.uid);
    // Get
    const got = await core.readNamespacedConfigMap({ name, namespace: ns });
    if (got.metadata.uid !== created.metadata.uid || got.data.k !== 'v1') fail('get mismatch');
    log('get ok, resourceVersion', got.metadata.resourceVersion);
    // List
    const list = await core.listNamespacedConfigMap({ namespace: ns, labelSelector: sel });
    if (list.items.length !== 1 || list.items[0].metadata.name !== name) fail('list returned ' + list.items.map((i) => i.metadata.name));
    log('list ok:', list.items.length, 'item(s)');
    // Patch (JSON merge patch)
    const patched = await core.patchNamespacedConfigMap(
      { name, namespace: ns, body: { data: { k: 'v2', extra: 'x' } } },
      k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
    );
    if (patched.data.k !== 'v2' || patched.data.extra !== 'x') fail('patch returned ' + JSON.stringify(patched.data));
    log('patch ok:', JSON.stringify(patched.data));
    // Delete
    await core.deleteNamespacedConfigMap({ name, namespace: ns });
    await waitFor(() => events.some((e) => e.startsWith('DELETED:')), 'DELETED event');
    try {
      await core.readNamespacedConfigMap({ name, namespace: ns });
      fail('configmap still exists after delete');
    } catch (e) {
      if (e.code !== 404) fail('get after delete: ' + e);
    }
    log('delete ok (get -> 404)');
    ctl.abort();
    if (watchErr) fail('watch error: ' + watchErr);
    log('watch events:', events.join(' '));
    const want = ['ADDED:' + name + ':v1', 'MODIFIED:' + name + ':v2', 'DELETED:' + name + ':v2'];
    if (JSON.stringify(events) !== JSON.stringify(want)) fail('watch saw ' + JSON.stringify(events) + ', want ' + JSON.stringify(want));
    log('PASS');
  } finally {
    if (ownNs) await core.deleteNamespace({ name: ns }).catch(() => {});
  }
}

main().catch((e) => fail(e && e.stack ? e.stack : e));
