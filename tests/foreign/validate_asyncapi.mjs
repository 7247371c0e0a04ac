// Validates AsyncAPI documents with the official parser (@asyncapi/parser), installed by
// scripts/install-asyncapi-parser.sh. Usage: node validate_asyncapi.mjs FILE...
// Prints each document's diagnostics; exits 1 when any document has an error (severity 0),
// 2 on a usage or load problem.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const modules = process.env.EVENTBUS_ASYNCAPI_NODE_MODULES;
if (!modules) {
  console.error('EVENTBUS_ASYNCAPI_NODE_MODULES is not set (the node_modules of @asyncapi/parser)');
  process.exit(2);
}
const require = createRequire(modules + '/');
const { Parser } = require('@asyncapi/parser');

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node validate_asyncapi.mjs FILE...');
  process.exit(2);
}
const parser = new Parser();
let failed = false;
for (const file of files) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
  const errors = diagnostics.filter((d) => d.severity === 0);
  for (const d of diagnostics) {
    const level = ['error', 'warning', 'info', 'hint'][d.severity] ?? String(d.severity);
    console.log(`${file}: ${level}: ${d.code}: ${d.message} at /${d.path.join('/')}`);
  }
  if (errors.length > 0 || !document) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} errors)`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}`);
  }
}
process.exit(failed ? 1 : 0);
