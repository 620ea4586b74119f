// Syntax modes by file name: .py -> Python; .sh, .bash and Makefiles -> shell (an approximation
// for Makefiles, which also get real tab indentation); anything else is plain text.
import { python } from '@codemirror/lang-python';
import { StreamLanguage, indentUnit } from '@codemirror/language';
import { shell } from '@codemirror/legacy-modes/mode/shell';

const shellLanguage = StreamLanguage.define(shell);
const MAKEFILES = new Set(['Makefile', 'makefile', 'GNUmakefile']);

export function languageFor(path) {
  const base = path.split('/').pop();
  if (MAKEFILES.has(base) || /\.mk$/.test(base)) return [shellLanguage, indentUnit.of('\t')];
  if (/\.py$/i.test(base)) return python();
  if (/\.(sh|bash)$/i.test(base)) return shellLanguage;
  return [];
}

export function languageName(path) {
  const base = path.split('/').pop();
  if (MAKEFILES.has(base) || /\.mk$/.test(base)) return 'Makefile';
  if (/\.py$/i.test(base)) return 'Python';
  if (/\.(sh|bash)$/i.test(base)) return 'Shell';
  return 'Plain text';
}
