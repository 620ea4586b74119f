// "Recent errors and alerts". Its one data source is SOURCE, api/problems, which the runner
// composes from its alerts (firing, and lately cleared), failed sessions and builds, sandbox
// events (OOM kills, unexpected exits, unhealthy sandboxes), failed deploys and operators'
// actions that did not succeed. Each item has `at`, `severity` (`error`, `warning` or `info`),
// `title`, and optionally `detail` and `link` (a dashboard route such as `#/sessions/{id}`).
import { get } from '../api.js';
import { ago, clear, empty, errorBox, h } from '../dom.js';

const SOURCE = 'problems';
const items = (body) => body.items;

export function problemsPanel() {
  const list = h('div', empty('Loading…'));
  const el = h('section.card#problems', h('h2', 'Recent errors and alerts'), list);
  return {
    el,
    async refresh(ctx) {
      try {
        const found = items(await get(SOURCE, ctx));
        clear(
          list,
          found.length
            ? h(
                'ul.list.problems',
                found.map((p) =>
                  h(
                    `li.sev-${p.severity}`,
                    h('span.sev', p.severity),
                    ' ',
                    p.link ? h('a', { href: p.link }, p.title) : h('span', p.title),
                    h('span.muted', ` · ${ago(p.at)}`),
                    p.detail ? h('div.small.muted.clip', { title: p.detail }, p.detail) : null,
                  ),
                ),
              )
            : empty('Nothing went wrong recently.'),
        );
      } catch (e) {
        if (e.name !== 'AbortError') clear(list, errorBox(e));
      }
    },
  };
}
