// The parts of the page around the routes: the runner's state in the top bar.

/** The runner's drain state in the top bar (refreshed by the overview too). */
export function showRunner(runner) {
  const el = document.getElementById('runner-state');
  el.textContent = runner.draining ? `${runner.instance} · draining` : `${runner.instance} · taking sessions`;
  el.className = `pill ${runner.draining ? 'warn' : 'ok'}`;
  el.title = `runner ${runner.instance}, version ${runner.version}`;
}
