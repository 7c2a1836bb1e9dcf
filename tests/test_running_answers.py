"""Stop answer: it stops the answer streaming, or the one whose question was just sent (Send and
the answer's start are two events on the page, and Stop can come between them); New
conversation drops the one whose question was just sent."""

from __future__ import annotations

from tutor.page import DROPPED, MAX_EXPECTED_ANSWERS, RunningAnswers


def test_stop_between_sending_and_the_answers_start_stops_that_answer():
    answers = RunningAnswers()
    answers.expect("ada")
    answers.stop("ada")
    with answers.running("ada") as answer:
        assert answer.stop.is_set()


def test_stop_while_an_answer_streams_stops_it_and_not_the_next():
    answers = RunningAnswers()
    answers.expect("ada")
    with answers.running("ada") as answer:
        assert not answer.stop.is_set()
        answers.stop("ada")
        assert answer.stop.is_set()
    answers.expect("ada")
    with answers.running("ada") as answer:
        assert not answer.stop.is_set()


def test_a_stop_with_no_question_sent_is_forgotten():
    answers = RunningAnswers()
    answers.stop("ada")  # nothing sent, nothing streaming
    answers.expect("ada")
    with answers.running("ada") as answer:
        assert not answer.stop.is_set()


def test_another_students_stop_does_not_stop_mine():
    answers = RunningAnswers()
    answers.expect("ada")
    answers.expect("grace")
    answers.stop("grace")
    with answers.running("ada") as answer:
        assert not answer.stop.is_set()


def test_questions_waiting_for_their_answers_are_bounded():
    answers = RunningAnswers()
    for i in range(MAX_EXPECTED_ANSWERS + 1):
        answers.expect(f"student {i}")
    answers.stop("student 0")  # the oldest was forgotten: its Stop finds nothing to stop
    answers.stop(f"student {MAX_EXPECTED_ANSWERS}")
    with answers.running("student 0") as answer:
        assert not answer.stop.is_set()
    with answers.running(f"student {MAX_EXPECTED_ANSWERS}") as answer:
        assert answer.stop.is_set()


def test_new_conversation_drops_an_answer_about_to_begin():
    # Stopped, an answer that had not begun would put its question back in the chat it was
    # asked in: the old conversation would come back after "New conversation" emptied it.
    answers = RunningAnswers()
    answers.expect("ada")
    answers.stop("ada", then=DROPPED)
    with answers.running("ada") as answer:
        assert answer.dropped and answer.stop.is_set()
    answers.expect("ada")  # the next question is answered
    with answers.running("ada") as answer:
        assert not answer.dropped and not answer.stop.is_set()


def test_new_conversation_while_an_answer_streams_stops_it_without_dropping_the_next():
    answers = RunningAnswers()
    answers.expect("ada")
    with answers.running("ada") as answer:
        answers.stop("ada", then=DROPPED)
        assert answer.stop.is_set() and not answer.dropped
    answers.expect("ada")
    with answers.running("ada") as answer:
        assert not answer.dropped and not answer.stop.is_set()
