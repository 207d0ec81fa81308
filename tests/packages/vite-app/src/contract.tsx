// Compile-time checks of the packages' types in an app's own tsconfig: payloads are typed
// (never `any`, with or without zod installed), and wrong ones do not compile.
import {
  type ChatClient,
  type CommandInputs,
  createChatClient,
  type UserStats,
} from '@chat-backend/client'
import type { ChatSummary } from '@chat-backend/protocol'

type IsAny<T> = 0 extends 1 & T ? true : false

export const payloadNotAny: IsAny<CommandInputs['chat:create']> = false
export const resultNotAny: IsAny<Awaited<ReturnType<ChatClient['createChat']>>> = false

export async function contract(): Promise<ChatSummary> {
  const client = createChatClient({ url: 'http://localhost:3000', getToken: async () => null })
  // @ts-expect-error a title is a string, and `bogus` is no field of chat:create
  await client.createChat({ title: 42, bogus: true })
  // @ts-expect-error chat:open needs a chatId
  await client.openChat({})
  // @ts-expect-error no such client event
  client.on('chat:exploded', () => {})
  const stats: UserStats = (await client.stats()).stats
  // @ts-expect-error messageCount is a number
  const wrong: string = stats.messageCount
  void wrong
  const { chat } = await client.createChat({ title: 'typed' })
  return chat
}
