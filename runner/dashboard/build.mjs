// Builds the dashboard into dist/: app.js (esbuild bundle of src/main.js), app.css (uPlot's CSS +
// src/app.css) and index.html. Run with `npm ci && node build.mjs` (runner/build.rs does).
// Nothing is fetched at run time: the page loads only app.js and app.css, by relative URL.
import { build, transform } from 'esbuild';
import { mkdir, readFile, writeFile, copyFile, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'src');
const dist = join(here, 'dist');
const require = createRequire(import.meta.url);

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

await build({
  entryPoints: [join(src, 'main.js')],
  outfile: join(dist, 'app.js'),
  bundle: true,
  format: 'iife',
  minify: true,
  target: 'es2020',
  platform: 'browser',
  legalComments: 'eof', // keep uPlot's license notice (MIT) in the bundle
  sourcemap: false,
  logLevel: 'warning',
});

const uplotCss = await readFile(require.resolve('uplot/dist/uPlot.min.css'), 'utf8');
const appCss = await readFile(join(src, 'app.css'), 'utf8');
const css = await transform(`${uplotCss}\n${appCss}`, { loader: 'css', minify: true, target: ['chrome90', 'firefox90', 'safari14'] });
await writeFile(join(dist, 'app.css'), css.code);

await copyFile(join(src, 'index.html'), join(dist, 'index.html'));

let total = 0;
for (const name of ['index.html', 'app.js', 'app.css']) {
  const { size } = await stat(join(dist, name));
  total += size;
  console.log(`dist/${name.padEnd(10)} ${(size / 1024).toFixed(1).padStart(7)} KiB`);
}
console.log(`dist total      ${(total / 1024).toFixed(1).padStart(7)} KiB`);
