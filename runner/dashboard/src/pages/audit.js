// The audit log: who did what, when, and how it ended.
import { get } from '../api.js';
import { ago, clear, clock, empty, errorBox, h } from '../dom.js';

export function mount(ctx) {
  const { root } = ctx;
  const box = h('div', empty('Loading…'));
  clear(root, h('h1', 'Audit log'), h('section.card', box));
  ctx.every(10000, async () => {
    try {
      const { entries } = await get('audit?limit=200', ctx);
      clear(
        box,
        entries.length
          ? h(
              'table.audit#audit',
              h('thead', h('tr', ['When', 'Who', 'What', 'Target', 'Outcome', 'Detail'].map((t) => h('th', t)))),
              h(
                'tbody',
                entries.map((e) =>
                  h(
                    'tr',
                    { dataset: { action: e.action, actor: e.actor } },
                    h('td', { title: clock(e.at) }, ago(e.at)),
                    h('td', e.actor),
                    h('td.mono', e.action),
                    h('td.mono.small', e.target),
                    h(`td.${e.outcome.startsWith('ok') ? 'ok-text' : 'error-text'}`, e.outcome),
                    h('td.small', e.detail || ''),
                  ),
                ),
              ),
            )
          : empty('No operator has acted yet.'),
      );
    } catch (e) {
      if (e.name !== 'AbortError') clear(box, errorBox(e));
    }
  });
}
