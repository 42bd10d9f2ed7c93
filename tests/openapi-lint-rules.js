// A Redocly CLI 1.x plugin (tests/openapi-lint.yaml loads it): the rules that
// @redocly/cli 2.x's `recommended` set checks on an OpenAPI 3.0 document and
// 1.34 does not have, written after 2.x's own, with the same messages.  The
// pinned 1.34 runs on Debian bookworm's node 18; 2.x needs node 20.19.
// Not here: nullable-type-sibling (1.34's struct rule reports it, an error),
// security-scopes-defined (oauth2 scopes; the API has no oauth2) and
// no-illogical-composition-keywords' search for overlapping oneOf schemas.
'use strict';
const { isDeepStrictEqual } = require('node:util');

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);

// 1.34's checks only object+items and array+properties (2.x: an error)
const NoSchemaTypeMismatch = () => ({
  Schema(schema, { report, location }) {
    if (typeof schema.type !== 'string') return;
    if (schema.type !== 'array' && schema.items) {
      report({
        message: `Schema type mismatch: '${schema.type}' type should not contain 'items' field.`,
        location: location.child('items'),
      });
    }
    if (schema.type !== 'object' && schema.properties) {
      report({
        message: `Schema type mismatch: '${schema.type}' type should not contain 'properties' field.`,
        location: location.child('properties'),
      });
    }
  },
});

// allOf/anyOf/oneOf that say nothing: too few schemas, an empty one, the same
// one twice, an inline one a discriminator cannot pick (2.x's checks but for
// its analysis of overlapping oneOf schemas)
const NoIllogicalCompositionKeywords = () => ({
  Schema(schema, { report, location, resolve }) {
    const hasDiscriminator = isObject(schema.discriminator);
    for (const keyword of ['allOf', 'anyOf', 'oneOf']) {
      const list = schema[keyword];
      if (!Array.isArray(list)) continue;
      const at = location.child([keyword]);
      let tooFew;
      if (keyword === 'allOf') {
        // allOf: [one] beside other keys (description, nullable) is the 3.0 idiom
        const only = list.length === 1 ? resolve(list[0]).node : undefined;
        tooFew = list.length === 0 ||
          (list.length === 1 && Object.keys(schema).length === 1 &&
           !(isObject(only) && isObject(only.discriminator)));
      } else {
        tooFew = list.length < 2 && !hasDiscriminator;
      }
      if (tooFew) {
        report({
          message: `\`${keyword}\` should have at least two schemas.` +
            (list.length === 1 ? ' Use the schema directly instead.' : ''),
          location: at.key(),
        });
      }
      list.forEach((item, i) => {
        if (isObject(item) && Object.keys(item).length === 0) {
          report({ message: `Schema in \`${keyword}\` is empty, so it matches any value.`, location: at.child([i]) });
        }
      });
      for (let i = 1; i < list.length; i++) {
        const first = list.findIndex((item) => isDeepStrictEqual(item, list[i]));
        if (first < i) {
          report({
            message: `Schema in \`${keyword}\` duplicates the schema at position ${first + 1}.`,
            location: at.child([i]),
          });
        }
      }
      if (keyword !== 'allOf' && hasDiscriminator) {
        list.forEach((item, i) => {
          if (!(isObject(item) && ('$ref' in item || '$id' in item))) {
            report({
              message: `Schema in \`${keyword}\` is inline, so the \`discriminator\` cannot select it. Use a \`$ref\` to a named schema.`,
              location: at.child([i]),
            });
          }
        });
      }
    }
  },
});

const NoDuplicatedEnumValues = () => ({
  Schema(schema, { report, location }) {
    if (!Array.isArray(schema.enum)) return;
    const scalars = new Set();
    const composites = [];
    schema.enum.forEach((value, i) => {
      const composite = isObject(value) || Array.isArray(value);
      const seen = composite ? composites.some((c) => isDeepStrictEqual(c, value)) : scalars.has(value);
      if (seen) {
        report({
          message: `Duplicated enum value found: '${composite ? JSON.stringify(value) : value}'.`,
          location: location.child(['enum', i]),
        });
      }
      if (composite) composites.push(value);
      else scalars.add(value);
    });
  },
});

const NoDuplicatedTagNames = () => {
  const names = new Set();
  return {
    Tag: {
      leave(tag, { report, location }) {
        if (names.has(tag.name)) report({ message: `Duplicate tag name found: '${tag.name}'.`, location });
        else names.add(tag.name);
      },
    },
  };
};

const NoUnsafeMarkdown = () => ({
  any(node, { report, location }) {
    if (!isObject(node) || typeof node.description !== 'string') return;
    const text = node.description;
    const at = location.child(['description']);
    if (/<script\b/i.test(text)) {
      report({ message: "Markdown descriptions must not contain '<script>' tags.", location: at });
    }
    if (/<[a-z][^>]*\bon[a-z]+\s*=/i.test(text)) {
      report({ message: 'Markdown descriptions must not contain HTML event handler attributes.', location: at });
    }
    if (/(?:\]\(\s*|\b(?:href|src)\s*=\s*["']?\s*)javascript:/i.test(text)) {
      report({ message: "Markdown descriptions must not contain 'javascript:' URLs.", location: at });
    }
  },
});

// OpenAPI 3.0 ignores what stands beside a $ref (a Path Item's $ref aside)
const SpecRefSiblings = () => ({
  ref: {
    leave(node, { report, location, type }) {
      if (type.name === 'PathItem') return;
      for (const key of Object.keys(node)) {
        if (key !== '$ref') {
          report({
            message: `Property \`${key}\` is not expected here because it is defined alongside \`$ref\`.`,
            location: location.child(key).key(),
          });
        }
      }
    },
  },
});

module.exports = () => ({
  id: 'latentd',
  rules: {
    oas3: {
      'no-schema-type-mismatch': NoSchemaTypeMismatch,
      'no-illogical-composition-keywords': NoIllogicalCompositionKeywords,
      'no-duplicated-enum-values': NoDuplicatedEnumValues,
      'no-duplicated-tag-names': NoDuplicatedTagNames,
      'no-unsafe-markdown': NoUnsafeMarkdown,
      'spec-ref-siblings': SpecRefSiblings,
    },
  },
});
