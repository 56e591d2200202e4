import t from 'tap';
import { McpContentResult } from './mcpContent.ts';

const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';

t.test('text, image, audio and embedded resources follow the convention', async (t) => {
  const result = {
    content: [
      { type: 'text', text: 'hello' },
      { type: 'image', data: PNG, mimeType: 'image/png' },
      { type: 'audio', data: 'UklGRg==', mimeType: 'audio/wav' },
      { type: 'resource', resource: { uri: 'test://r', mimeType: 'text/plain', text: 'body' } },
      { type: 'resource', resource: { uri: 'test://b', mimeType: 'application/octet-stream', blob: 'AAE=' } },
    ],
    summary: 'other fields may sit beside content',
  };
  t.ok(McpContentResult.safeParse(result).success);
});

t.test('a result the gateway must show as JSON text instead', async (t) => {
  const refused: Array<[string, unknown]> = [
    ['a plain object', { total: 3 }],
    ['no blocks', { content: [] }],
    ['content as a string', { content: 'hello' }],
    ['an unknown block type', { content: [{ type: 'video', data: PNG, mimeType: 'video/mp4' }] }],
    [
      'image data that is not base64',
      { content: [{ type: 'image', data: 'not base64!', mimeType: 'image/png' }] },
    ],
    ['an image without a MIME type', { content: [{ type: 'image', data: PNG }] }],
    [
      'a resource with neither text nor blob',
      { content: [{ type: 'resource', resource: { uri: 'test://r', mimeType: 'text/plain' } }] },
    ],
    ['a block with an extra field', { content: [{ type: 'text', text: 'x', html: '<b>x</b>' }] }],
  ];
  for (const [what, value] of refused) t.notOk(McpContentResult.safeParse(value).success, what);
});
