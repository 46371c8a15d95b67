// OpenAI's official JS client, unmodified, against the bridge.
// node openai.mjs <baseUrl> <command> [json args]; prints JSON lines.
import OpenAI from "openai";

const [baseUrl, command, rawArgs] = process.argv.slice(2);
const args = rawArgs ? JSON.parse(rawArgs) : {};
const client = new OpenAI({ apiKey: "sk-test", baseURL: `${baseUrl}/v1`, maxRetries: 0 });
const print = (value) => process.stdout.write(JSON.stringify(value) + "\n");

if (command === "chat-stream") {
  // A streamed chat completion: each delta's text, the finish reason, the usage.
  const stream = await client.chat.completions.create({ ...args, stream: true,
    stream_options: { include_usage: true } });
  const deltas = [];
  let finish = null;
  let usage = null;
  let id = null;
  for await (const chunk of stream) {
    id = chunk.id;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      if (choice.delta.content) deltas.push(choice.delta.content);
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  print({ id, deltas, finish, usage });
} else if (command === "chat-error") {
  // A model failing mid-stream: the text before, then the error the client raises.
  const deltas = [];
  try {
    const stream = await client.chat.completions.create({ ...args, stream: true });
    for await (const chunk of stream) {
      for (const choice of chunk.choices) if (choice.delta.content) deltas.push(choice.delta.content);
    }
    print({ deltas, error: null });
  } catch (error) {
    print({ deltas, error: error.message });
  }
} else {
  throw new Error(`unknown command ${command}`);
}
